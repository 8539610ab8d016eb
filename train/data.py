"""The training data: a mixture of sources, sampled by index so that any rank and any resumed run can start at
any position without replaying the stream.

Sample ``i`` of the mixture is a pure function of (seed, i, stage mixture): the source is drawn with ratios from
the config, then the source gives its sample for that draw.
"""
from __future__ import annotations

import numpy as np

from anyref.samples import ReferringSample
from anyref.synthref import SynthRef, SynthRefConfig

__all__ = ["Mixture", "SOURCES"]


class SynthRefSource:
    """SynthRef's endless training stream. Options: tasks (task -> weight), image_size, seed."""

    def __init__(self, options: dict, seed: int):
        self.world = SynthRef(SynthRefConfig(image_size=int(options.get("image_size", 128)),
                                             seed=int(options.get("world_seed", 0))))
        self.seed = seed
        self.tasks = options.get("tasks")

    def sample(self, index: int, options: dict) -> ReferringSample:
        return self.world.sample_at(self.seed, index, options.get("tasks", self.tasks))

    def reference_kinds(self) -> set[str]:
        """Reference kinds its tasks train (text, box, example, audio; mask with the group task)."""
        kinds = {"text", "box", "example", "audio"}
        tasks = self.tasks or {"group": 1}
        return kinds | ({"mask"} if tasks.get("group", 0) > 0 else set())


# source name -> class taking (options, seed) with sample(index, stage_options)
SOURCES = {"synthref": SynthRefSource}


class Mixture:
    """mixture: source name -> {"ratio": r, ...options}; stage mixtures override options per source."""

    def __init__(self, mixture: dict, seed: int):
        unknown = set(mixture) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown data sources {sorted(unknown)}; available: {sorted(SOURCES)}")
        self.base = mixture
        self.seed = seed
        self.sources = {name: SOURCES[name](options, seed) for name, options in mixture.items()}

    def reference_kinds(self) -> set[str]:
        """Every reference kind some source of the mixture trains."""
        return set().union(*(source.reference_kinds() for source in self.sources.values()))

    def sample(self, index: int, stage_mixture: dict | None = None) -> ReferringSample:
        options = {name: {**self.base[name], **(stage_mixture or {}).get(name, {})} for name in self.base}
        names = [n for n in options if float(options[n].get("ratio", 1.0)) > 0]
        ratios = np.array([float(options[n].get("ratio", 1.0)) for n in names])
        rng = np.random.default_rng([self.seed, index])
        name = names[int(rng.choice(len(names), p=ratios / ratios.sum()))] if len(names) > 1 else names[0]
        return self.sources[name].sample(index, options[name])
