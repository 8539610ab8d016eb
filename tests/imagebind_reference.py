"""ImageBind's own code as a test reference, imported around its packaging problems. Test-only.

Source: the PyPI package ``imagebind-unofficial==0.1.1`` (its ``imagebind/models`` and ``imagebind/data.py`` are
official ImageBind code; install with ``pip install --no-deps -r requirements/imagebind-reference.txt``).
Nothing here is imported by AnyRef itself (note the package's LICENSE file is CC-BY-NC-SA 4.0).

What is patched, and why (everything else that runs is ImageBind's code unchanged):
1. ``imagebind/__init__.py`` imports ``data.py`` eagerly. The models are imported under a bare ``imagebind``
   package (same ``__path__``, __init__ not run) so that model tests need none of data.py's dependencies.
2. ``data.py`` does ``import pkg_resources`` at the top, only to locate the text BPE file; setuptools >= 81 no
   longer ships pkg_resources. A bare stand-in module is present during the import only (audio never uses it).
3. pytorchvideo 0.1.5 imports ``torchvision.transforms.functional_tensor``, renamed ``_functional_tensor`` in
   torchvision >= 0.17; the new module is aliased under the old name during the import only.
4. ``HeadConstantClipsPerVideoSampler`` (below, written here, NOT ImageBind's or pytorchvideo 0.1.5's code)
   replaces ``data.ConstantClipsPerVideoSampler``: ImageBind pins pytorchvideo from git (commit 28fe037d in its
   requirements.txt), whose sampler spaces clips by max_start / max(clips_per_video - 1, 1); the only PyPI
   release, 0.1.5, divides by clips_per_video, which would move the 2nd and 3rd clips.
5. The tests replace ``torchaudio.load`` (it needs FFmpeg, absent here) to hand ImageBind a given waveform.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
import warnings
from fractions import Fraction

import torch


@contextlib.contextmanager
def _temporary_modules(modules: dict[str, types.ModuleType]):
    """Put ``modules`` into sys.modules (and onto their parent packages) only for the ``with`` body."""
    added = [name for name in modules if name not in sys.modules]
    for name in added:
        sys.modules[name] = modules[name]
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]
            parent, _, child = name.rpartition(".")
            if parent and getattr(sys.modules.get(parent), child, None) is modules[name]:
                delattr(sys.modules[parent], child)


def _imagebind_package() -> types.ModuleType:
    """The ``imagebind`` package object, registered bare (see 1.) unless already imported."""
    if "imagebind" not in sys.modules:
        spec = importlib.util.find_spec("imagebind")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError(
                "ImageBind reference code is missing: "
                "pip install --no-deps -r requirements/imagebind-reference.txt"
            )
        package = types.ModuleType("imagebind")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["imagebind"] = package
    return sys.modules["imagebind"]


def imagebind_model_module() -> types.ModuleType:
    """``imagebind.models.imagebind_model`` (official model code)."""
    _imagebind_package()
    return importlib.import_module("imagebind.models.imagebind_model")


def imagebind_data_module() -> types.ModuleType:
    """``imagebind.data`` (official preprocessing), imported with the stand-ins described in 2. and 3."""
    _imagebind_package()
    if "imagebind.data" in sys.modules:
        return sys.modules["imagebind.data"]
    import torchvision.transforms._functional_tensor as functional_tensor

    stand_ins = {
        "pkg_resources": types.ModuleType("pkg_resources"),
        "torchvision.transforms.functional_tensor": functional_tensor,
    }
    with _temporary_modules(stand_ins), warnings.catch_warnings():
        # pytorchvideo 0.1.5 uses torch.jit.script_method at import: a FutureWarning unrelated to the tests.
        warnings.filterwarnings("ignore", message=".*script_method.*", category=FutureWarning)
        return importlib.import_module("imagebind.data")


def build_reference_model(config) -> torch.nn.Module:
    """ImageBind's own ``ImageBindModel`` whose audio branch has ``config``'s sizes, in eval mode.

    The other five modalities are shrunk to width 8 and one block so that building it is cheap; they take no
    part in an audio-only forward. Its ``forward({"audio": clips})`` with N x 1 x 128 x 204 clips returns the
    per-clip embeddings (the clip mean happens only for 5-D input); its state dict has the official key layout.
    """
    small = dict(embed_dim=8, num_blocks=1, num_heads=1)
    others = {f"{m}_{k}": v for m in ("vision", "text", "depth", "thermal", "imu") for k, v in small.items()}
    model = imagebind_model_module().ImageBindModel(
        audio_embed_dim=config.embed_dim,
        audio_num_blocks=config.depth,
        audio_num_heads=config.num_heads,
        audio_kernel_size=config.kernel_size,
        audio_stride=config.stride,
        audio_num_mel_bins=config.n_mels,
        audio_target_len=config.target_len,
        audio_drop_path=config.drop_path,
        out_embed_dim=config.out_dim,
        **others,
    )
    return model.eval()


class HeadConstantClipsPerVideoSampler:
    """pytorchvideo git's ConstantClipsPerVideoSampler arithmetic (see 4.), for ImageBind's ``get_clip_timepoints``.

    Called as ``sampler(last_end, duration, annotation=None)`` and returns (start, end, clip_index, aug_index,
    is_last_clip) like pytorchvideo's ClipInfo. As there: the float duration minus the Fraction clip length is
    float arithmetic, the rest exact Fractions; the k-th call starts at k * max_start / max(n - 1, 1).
    """

    def __init__(self, clip_duration: float, clips_per_video: int):
        self.clip_duration = Fraction(clip_duration)
        self.clips_per_video = clips_per_video
        self.index = 0

    def __call__(self, last_clip_time, video_duration, annotation):
        max_start = Fraction(max(video_duration - self.clip_duration, 0))
        step = Fraction(max_start, max(self.clips_per_video - 1, 1))
        index, start = self.index, step * self.index
        self.index += 1
        is_last = self.index >= self.clips_per_video or step * self.index > max_start
        if is_last:
            self.index = 0
        return start, start + self.clip_duration, index, 0, is_last
