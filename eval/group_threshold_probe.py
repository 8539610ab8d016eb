"""Would another membership threshold choose a model's mask groups better? A probe of ``select``'s threshold.

    python -m eval.group_threshold_probe --model synthref-tiny --n 200 --split val --out probe.json

``select`` keeps the candidates whose membership probability exceeds ``threshold`` (0.5 by default). The group
head is trained with its positives weighted ``group_pos_weight`` (5.0), which moves its probabilities up: where
the true membership probability is p, the weighted loss is lowest at w p / (w p + 1 - p), so the head's 0.5 is a
true probability of 1 / (w + 1), and a true 0.5 reads as w / (w + 1) (0.83 at w = 5). The probe asks each of
SynthRef's ``group`` samples once, as ``anyref eval synthref`` asks it, keeps every candidate's probability, and
scores the group chosen at each threshold with ReLA's gRefCOCO rules (cIoU, gIoU, N-acc, T-acc), the model's own
empty threshold (``group_empty_threshold``) kept; at the model's own threshold it scores exactly what the
evaluation scores. ``by_empty_threshold`` scores every pair of an empty threshold e (the group is empty unless a
candidate's probability exceeds it) and a membership threshold t <= e. Per rule ("all_colour", "same_shape",
"spatial"...) it also gives the same scores and how well the probabilities rank: members above non-members
(``member_auc``), and non-empty groups above empty ones by their largest probability (``group_auc``); a rule the
head has not learned sits near 0.5.
"""
from __future__ import annotations

import numpy as np

from anyref.group_heads import group_members
from anyref.synthref import SynthRef
from eval.metrics import GresAccumulator
from eval.results import RunOutput, diagnostic_parser, run_diagnostic
from eval.runners import union_mask

__all__ = ["THRESHOLDS", "with_model_thresholds", "rank_auc", "group_threshold_scores", "empty_threshold_scores",
           "group_threshold_probe"]

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.83, 0.85, 0.9, 0.95)


def with_model_thresholds(thresholds, config) -> tuple[float, ...]:
    """``thresholds`` and the model's own ``group_threshold`` and ``group_empty_threshold`` (when set), sorted."""
    own = {config.group_threshold, config.group_empty_threshold} - {None}
    return tuple(sorted({*thresholds, *own}))


def group_threshold_scores(probabilities: list[np.ndarray], candidates: list[np.ndarray], selected: list[np.ndarray],
                           thresholds=THRESHOLDS, empty_threshold: float | None = None) -> dict:
    """probabilities: per sample N membership probabilities; candidates: per sample N x H x W bool; selected: per
    sample N bool (the group). Returns {str(t): {"ciou", "giou", "n_acc", "t_acc"}}: a candidate joins the group
    when its probability exceeds t, unless none exceeds ``empty_threshold`` (None: t;
    :func:`anyref.group_heads.group_members`), and an empty group is the "no target" answer."""
    if not (len(probabilities) == len(candidates) == len(selected)) or not probabilities:
        raise ValueError(f"need one probability vector, candidate stack and group per sample, at least one "
                         f"({len(probabilities)}, {len(candidates)} and {len(selected)})")
    out = {}
    for t in thresholds:
        accumulator = GresAccumulator()
        for probs, masks, truth in zip(probabilities, candidates, selected):
            if probs.shape != truth.shape or len(masks) != len(probs):
                raise ValueError(f"a sample has {len(probs)} probabilities, {len(masks)} candidates and a group "
                                 f"over {len(truth)}")
            chosen = group_members(probs, t, empty_threshold)
            shape = masks.shape[1:]
            accumulator.add(union_mask(masks[chosen], shape), union_mask(masks[truth], shape), not chosen.any(),
                            not truth.any())
        result = accumulator.result()
        out[str(t)] = {name: float(result[name]) for name in ("ciou", "giou", "n_acc", "t_acc")}
    return out


def empty_threshold_scores(probabilities: list[np.ndarray], candidates: list[np.ndarray],
                           selected: list[np.ndarray], thresholds=THRESHOLDS) -> dict:
    """{str(e): group_threshold_scores at every membership threshold t <= e, with empty threshold e}: the groups
    chosen by the two thresholds of ``select`` (e = t is the one threshold of group_threshold_scores)."""
    return {str(e): group_threshold_scores(probabilities, candidates, selected, [t for t in thresholds if t <= e], e)
            for e in thresholds}


def rank_auc(positives, negatives) -> float | None:
    """The probability that a positive scores above a negative (ties count half); None when a side is empty."""
    positives, negatives = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    if not len(positives) or not len(negatives):
        return None
    above = (positives[:, None] > negatives[None, :]).mean()
    return float(above + 0.5 * (positives[:, None] == negatives[None, :]).mean())


def _rule_figures(probabilities: list, candidates: list, selected: list, thresholds,
                  empty_threshold: float | None) -> dict:
    """The scores of group_threshold_scores and the two rank AUCs (see the module's docstring) of one rule."""
    members = np.concatenate([p[s] for p, s in zip(probabilities, selected)])
    others = np.concatenate([p[~s] for p, s in zip(probabilities, selected)])
    largest = [(p.max(), s.any()) for p, s in zip(probabilities, selected)]
    return {"samples": len(selected), "empty_groups": sum(not any_ for _, any_ in largest),
            "member_auc": rank_auc(members, others),
            "group_auc": rank_auc([m for m, any_ in largest if any_], [m for m, any_ in largest if not any_]),
            "by_threshold": group_threshold_scores(probabilities, candidates, selected, thresholds, empty_threshold)}


def group_threshold_probe(model, n: int = 200, split: str = "val", thresholds=THRESHOLDS,
                          world_seed: int = 0) -> RunOutput:
    """group_threshold_scores() over the first ``n`` ``group`` samples of the SynthRef split, at ``thresholds`` and
    the model's own ``config.group_threshold``, with its own ``config.group_empty_threshold`` (so at its own
    threshold, what ``anyref eval synthref`` scores); and empty_threshold_scores() over the same thresholds and the
    model's empty threshold."""
    empty_threshold = model.config.group_empty_threshold
    thresholds = with_model_thresholds(thresholds, model.config)
    world = SynthRef.for_model(model.config, world_seed)
    probabilities, candidates, selected, rules = [], [], [], []
    for sample in world.split(split, "group", n):
        result = model.select(sample.image, sample.references, candidates=sample.candidates)
        probabilities.append(np.asarray(result.candidate_scores, dtype=np.float64))
        candidates.append(np.asarray(sample.candidates, dtype=bool))
        selected.append(np.asarray(sample.selected, dtype=bool))
        rules.append(sample.meta["rule"])
    scores = group_threshold_scores(probabilities, candidates, selected, thresholds, empty_threshold)
    by_empty = empty_threshold_scores(probabilities, candidates, selected, thresholds)
    by_rule = {}
    for rule in sorted(set(rules)):
        keep = [i for i, r in enumerate(rules) if r == rule]
        by_rule[rule] = _rule_figures([probabilities[i] for i in keep], [candidates[i] for i in keep],
                                      [selected[i] for i in keep], thresholds, empty_threshold)
    empty = sum(int(not s.any()) for s in selected)
    return RunOutput(metrics={"group": {"by_threshold": scores, "by_empty_threshold": by_empty}, "by_rule": by_rule},
                     counts={"group": {"samples": len(selected), "empty_groups": empty}},
                     settings={"n": n, "split": split, "thresholds": list(thresholds),
                               "empty_threshold": empty_threshold, "world_seed": world_seed})


def _report(run: RunOutput, model) -> None:
    empty = model.config.group_empty_threshold
    print(f"the model's empty threshold: {'none (the threshold decides)' if empty is None else empty}")
    print(f"{'threshold':>9} {'cIoU':>6} {'gIoU':>6} {'N-acc':>6} {'T-acc':>6}")
    for t, m in run.metrics["group"]["by_threshold"].items():
        print(f"{t:>9} {m['ciou']:6.3f} {m['giou']:6.3f} {m['n_acc']:6.3f} {m['t_acc']:6.3f}")
    print(f"\nwith an empty threshold of 0.8 or more\n{'empty':>6} {'threshold':>9} {'cIoU':>6} {'gIoU':>6} "
          f"{'N-acc':>6} {'T-acc':>6}")
    for e, row in run.metrics["group"]["by_empty_threshold"].items():
        for t, m in row.items() if float(e) >= 0.8 else ():
            print(f"{e:>6} {t:>9} {m['ciou']:6.3f} {m['giou']:6.3f} {m['n_acc']:6.3f} {m['t_acc']:6.3f}")
    threshold = str(model.config.group_threshold)
    print(f"\nper rule at the model's threshold {threshold} (member / group AUC: how well its probabilities rank)")
    for rule, m in run.metrics["by_rule"].items():
        at = m["by_threshold"][threshold]
        figures = f"cIoU {at['ciou']:.3f}  N-acc {at['n_acc']:.3f}  T-acc {at['t_acc']:.3f}  "
        aucs = "  ".join(f"{name} {'-' if m[name] is None else format(m[name], '.2f')}"
                         for name in ("member_auc", "group_auc"))
        print(f"{rule:>12} ({m['samples']}, {m['empty_groups']} empty)  {figures}{aucs}")


def main(argv: list[str] | None = None) -> int:
    return run_diagnostic(argv, diagnostic_parser(__doc__, n=200, split="val"),
                          lambda model, args: group_threshold_probe(model, args.n, args.split), _report,
                          "group_threshold_probe")


if __name__ == "__main__":
    raise SystemExit(main())
