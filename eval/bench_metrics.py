"""Time the vectorised AVSBench F-score against a per-threshold Python loop.

    python -m eval.bench_metrics                      # 5 x 224 x 224 video, 7 repeats
    python -m eval.bench_metrics --repeats 15 --size 320

Prints the median time of each and the speed-up; ``main`` returns the speed-up. The loop version,
:func:`avs_fscore_loop`, is the baseline being measured and also the independent reference the unit tests compare
:func:`eval.metrics.avs_fscore` against.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional, Sequence

import torch

from eval.metrics import avs_fscore


def avs_fscore_loop(logits: torch.Tensor, gt: torch.Tensor, beta2: float = 0.3, num_thresholds: int = 255) -> float:
    """AVSBench F-score of one video written the straightforward way: one pass over the pixels per threshold.

    logits: N x H x W float32; gt: N x H x W {0, 1}. Frames with an empty GT are skipped; the F curve is averaged
    over the remaining frames and its max is the score (0 if every frame is empty).
    """
    probs = torch.sigmoid(logits.to(torch.float32))
    gt = gt.to(torch.float32)
    keep = gt.flatten(1).sum(1) > 0
    if not keep.any():
        return 0.0
    probs, gt = probs[keep], gt[keep]
    n = probs.shape[0]
    thresholds = torch.linspace(0, 1 - 1e-10, num_thresholds, dtype=torch.float32)
    curve = torch.zeros(num_thresholds, dtype=torch.float32)
    for i in range(num_thresholds):
        y = (probs >= thresholds[i]).to(torch.float32)
        tp = (y * gt).sum((1, 2))
        prec = tp / (y.sum((1, 2)) + 1e-20)
        rec = tp / (gt.sum((1, 2)) + 1e-20)
        f = (1 + beta2) * prec * rec / (beta2 * prec + rec)
        f[f != f] = 0  # NaN where prec = rec = 0
        curve[i] = f.sum() / n
    return float(curve.max())


def _median_seconds(fn: Callable[[], float], repeats: int) -> float:
    fn()  # warm-up: first calls pay one-off allocation and dispatch costs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: Optional[Sequence[str]] = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="frame height and width")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.frames, args.size, args.size)
    logits = torch.randn(shape, generator=gen) * 3
    gt = (torch.rand(shape, generator=gen) < 0.3).to(torch.float32)

    vectorised, looped = avs_fscore(logits, gt), avs_fscore_loop(logits, gt)
    if abs(vectorised - looped) > 1e-6:
        raise RuntimeError(f"vectorised F-score {vectorised} disagrees with the loop reference {looped}")
    t_vec = _median_seconds(lambda: avs_fscore(logits, gt), args.repeats)
    t_loop = _median_seconds(lambda: avs_fscore_loop(logits, gt), args.repeats)
    speedup = t_loop / t_vec
    print(f"avs_fscore on a {'x'.join(map(str, shape))} video, median of {args.repeats} "
          f"(torch threads: {torch.get_num_threads()}):")
    print(f"  per-threshold loop {t_loop * 1e3:8.2f} ms")
    print(f"  vectorised         {t_vec * 1e3:8.2f} ms")
    print(f"  speed-up           {speedup:8.1f}x   (F = {vectorised:.6f})")
    return speedup


if __name__ == "__main__":
    main()
