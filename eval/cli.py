"""``anyref eval``: run a benchmark and write a results JSON, or tabulate results next to the published numbers.

    anyref eval res      --model M --data refer_data --dataset refcoco --split val --out refcoco_val.json
    anyref eval res      --model M --data VGPhraseCut_v0 --dataset phrasecut --split test --out phrasecut.json
    anyref eval gres     --model M --data refer_data --split val --out grefcoco_val.json
    anyref eval groups   --model M --data refer_data --dataset grefcoco --split val --out groups_val.json
    anyref eval avs      --model M --data AVSBench --subset s4 --split test --out s4.json
    anyref eval fewshot  --model M --data Datasets_HSN --dataset pascal --fold 0 --shot 1 --out pascal_f0.json
    anyref eval reg      --model M --data refer_data --dataset refcocog --split val --out reg.json
    anyref eval reg      --model M --data flickr30k_entities --dataset flickr30k --split test --out reg_flickr.json
    anyref eval synthref --model synthref-tiny --out synthref.json
    anyref eval summary  *.json --out table.md
    anyref eval compare  shipped.json other.json --out compare.json

Every benchmark takes ``--limit N`` (score the first N items), ``--save-overlays DIR`` (overlay PNGs) and
``--no-progress``. See docs/evaluation.md for the layouts each ``--data`` must have.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from anyref.model_args import add_model_arguments, inference_setting_words, load_model

__all__ = ["register", "main"]

_BENCHMARK_HELP = {
    "res": "referring segmentation on RefCOCO / RefCOCO+ / RefCOCOg / RefClef / PhraseCut (gIoU, cIoU)",
    "gres": "generalised referring segmentation on gRefCOCO (gIoU, cIoU, N-acc, T-acc)",
    "groups": "mask-group selection among the image's instances for gRefCOCO / RefCOCO-family expressions "
              "(group gIoU, cIoU, N-acc, T-acc)",
    "avs": "audio-visual segmentation on AVSBench S4 / MS3 (mIoU, F-score per video)",
    "fewshot": "few-shot segmentation on PASCAL-5i / COCO-20i episodes (mIoU, FB-IoU)",
    "reg": "referring expression generation on RefCOCO-family or Flickr30K Entities boxes (METEOR, CIDEr)",
    "synthref": "every SynthRef task on its fixed test split",
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _common(parser: argparse.ArgumentParser, split: str, data: bool = True) -> None:
    add_model_arguments(parser)
    if data:
        parser.add_argument("--data", required=True, help="dataset root in its released layout")
    parser.add_argument("--split", default=split, help=f"split to score (default {split})")
    parser.add_argument("--out", help="results JSON to write (atomically); without it the results are printed")
    parser.add_argument("--limit", type=_positive, help="score only the first N items (samples/videos/episodes)")
    parser.add_argument("--save-overlays", metavar="DIR", help="write overlay PNGs (prediction, ground truth) here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    """Add the ``eval`` command and its benchmark sub-commands to ``anyref``'s sub-parsers."""
    from eval.datasets import AVS_SUBSETS, FEWSHOT_BENCHMARKS, REFER_DATASETS
    from eval.datasets.fewshot import HSNET_EPISODES, HSNET_SEED

    parser = subparsers.add_parser("eval", help="evaluate a model on a benchmark, or summarise results",
                                   description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    def add(name: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=_BENCHMARK_HELP[name], description=_BENCHMARK_HELP[name])
        sub.set_defaults(func=_run_benchmark, _parser=sub)
        return sub

    res = add("res")
    _common(res, "val")
    res.add_argument("--dataset", default="refcoco", choices=[*sorted(REFER_DATASETS), "phrasecut"])
    res.add_argument("--split-by", help="refer splitBy (default: unc; umd for refcocog; none for phrasecut)")
    res.add_argument("--images", help="image folder (default: found below --data, e.g. images/mscoco/images/train2014;"
                                      " images/ for phrasecut)")

    gres = add("gres")
    _common(gres, "val")
    gres.add_argument("--split-by", default="unc")
    gres.add_argument("--images", help="COCO train2014 image folder (default: found below --data)")

    groups = add("groups")
    _common(groups, "val")
    groups.add_argument("--dataset", default="grefcoco", choices=["grefcoco", *sorted(REFER_DATASETS)])
    groups.add_argument("--split-by", help="splitBy (default: unc; umd for refcocog)")
    groups.add_argument("--images", help="COCO train2014 image folder (default: found below --data)")

    avs = add("avs")
    _common(avs, "test")
    avs.add_argument("--subset", default="s4", choices=AVS_SUBSETS)

    fewshot = add("fewshot")
    _common(fewshot, "val")
    fewshot.add_argument("--dataset", default="pascal", choices=sorted(FEWSHOT_BENCHMARKS))
    fewshot.add_argument("--fold", type=int, default=0)
    fewshot.add_argument("--shot", type=_positive, default=1)
    fewshot.add_argument("--episodes", type=_positive, default=HSNET_EPISODES,
                         help=f"episodes to draw (default {HSNET_EPISODES}, HSNet's and the papers')")
    fewshot.add_argument("--seed", type=int, default=HSNET_SEED,
                         help=f"seed of the episode draw (default {HSNET_SEED}, HSNet's and the papers')")
    fewshot.add_argument("--splits", help="HSNet's data/splits folder; required for coco (its fold lists are pickles, "
                                          "read only from a folder you name); pascal's default: --data/splits")
    fewshot.add_argument("--no-mask-crop", action="store_true",
                         help="give the support images without their masks (the paper's plain setting)")

    reg = add("reg")
    _common(reg, "val")
    reg.add_argument("--dataset", default="refcocog", choices=[*sorted(REFER_DATASETS), "flickr30k"])
    reg.add_argument("--split-by", help="refer splitBy (default: umd for refcocog, else unc; none for flickr30k)")
    reg.add_argument("--images", help="image folder (default: found below --data; flickr30k-images/ beside or "
                                      "below it for flickr30k)")

    synthref = add("synthref")
    _common(synthref, "test", data=False)
    synthref.add_argument("--n", type=_positive, default=200, help="samples per task (default 200)")
    synthref.add_argument("--tasks", help="comma-separated tasks (default: every task that can be scored)")

    summary = commands.add_parser("summary", help="markdown table of results next to the published numbers")
    summary.add_argument("results", nargs="+", help="results JSON files written by `anyref eval ...`")
    summary.add_argument("--out", help="markdown file to write (the table is printed too)")
    summary.set_defaults(func=_run_summary)

    compare = commands.add_parser(
        "compare", help="bootstrap confidence intervals of results' figures and of their differences",
        description="Paired bootstrap over the per-sample records of results files scored on the same samples "
                    "(SynthRef): each file's figures with their intervals, and each file's difference to the first.")
    compare.add_argument("results", nargs="+", help="results JSON files (`anyref eval synthref --out`); the first "
                                                    "is the baseline")
    compare.add_argument("--labels", nargs="+", help="a column name per file (default: the file names)")
    compare.add_argument("--resamples", type=_positive, default=2000, help="bootstrap resamples (default 2000)")
    compare.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    compare.add_argument("--seed", type=int, default=0, help="seed of the resampling (default 0)")
    compare.add_argument("--out", help="JSON file to write the comparison to (the table is printed)")
    compare.set_defaults(func=_run_compare)


def _reader(args):
    from eval import datasets

    name = args.benchmark
    if name in ("res", "reg") and args.dataset in ("phrasecut", "flickr30k") and args.split_by:
        raise ValueError(f"{args.dataset} has no splitBy variants: leave out --split-by")
    if name == "res" and args.dataset == "phrasecut":
        return datasets.PhraseCutReader(args.data, args.split, args.images)
    if name == "res":
        return datasets.ResReader(args.data, args.dataset, args.split, args.split_by, args.images)
    if name == "reg" and args.dataset == "flickr30k":
        return datasets.Flickr30kReader(args.data, args.split, args.images)
    if name == "reg":
        return datasets.RegReader(args.data, args.dataset, args.split, args.split_by, args.images)
    if name == "gres":
        return datasets.GrefReader(args.data, args.split, args.split_by, args.images)
    if name == "groups":
        if args.dataset == "grefcoco":
            expressions = datasets.GrefReader(args.data, args.split, args.split_by or "unc", args.images)
        else:
            expressions = datasets.ResReader(args.data, args.dataset, args.split, args.split_by, args.images)
        return datasets.ExpressionGroupReader(expressions)
    if name == "avs":
        return datasets.AvsReader(args.data, args.subset, args.split)
    if name == "fewshot":
        return datasets.FewShotReader(args.data, args.dataset, args.fold, args.shot, args.episodes, args.seed,
                                      args.splits, args.split, mask_crop=not args.no_mask_crop)
    raise ValueError(f"no reader for {name!r}")


def _command_line(args) -> str:
    """The command that reproduces this run: ``anyref eval BENCHMARK`` plus every option not at its default (the
    inference settings as given, 'off' included)."""
    words = ["anyref", "eval", args.benchmark]
    settings = inference_setting_words(args)
    for action in args._parser._actions:
        if not action.option_strings or action.dest == "help" or action.option_strings[-1] in settings:
            continue  # help, or an inference setting: written as given below
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        option = action.option_strings[-1]
        words += [option] if value is True else [option, str(value)]
    return shlex.join(words + settings)


def _emit(results: dict, out) -> None:
    """Print the metrics, then write the results file: a write that fails after a long run still shows them."""
    from eval.results import write_results

    print(json.dumps({"benchmark": results["benchmark"], "dataset": results["dataset"], "split": results["split"],
                      "metrics": results["metrics"], "seconds": results["seconds"]}, indent=2), flush=True)
    if out:
        path = write_results(out, results)
        print(f"wrote {path}", file=sys.stderr)


def _run_benchmark(args) -> int:
    from eval import runners
    from eval.results import RunOutput, check_results_out, make_results

    check_results_out(args.out)  # before hours of work: a folder or an unwritable place fails now
    progress = not args.no_progress
    if args.benchmark == "synthref":
        from eval.synthref_eval import evaluate_synthref

        tasks = None if args.tasks is None else [t.strip() for t in args.tasks.split(",") if t.strip()]
        n = args.n if args.limit is None else min(args.n, args.limit)
        model = load_model(args)
        start = time.perf_counter()
        figures = evaluate_synthref(model, n=n, tasks=tasks, split=args.split, overlays=args.save_overlays,
                                    progress=progress, allow_untrained=args.allow_untrained)
        run = RunOutput(figures["metrics"], figures["counts"], {**figures["settings"], "primary": figures["primary"]},
                        per_sample=figures["per_sample"])
        dataset, data = "synthref", None
    else:
        reader = _reader(args)  # before the model: a bad --data fails fast
        model = load_model(args)
        start = time.perf_counter()
        runner = {"res": runners.run_res, "gres": runners.run_gres, "groups": runners.run_groups, "avs": runners.run_avs,
                  "fewshot": runners.run_fewshot, "reg": runners.run_reg}[args.benchmark]
        run = runner(model, reader, limit=args.limit, overlays=args.save_overlays, progress=progress,
                     allow_untrained=args.allow_untrained)
        dataset, data = reader.dataset, args.data
    seconds = time.perf_counter() - start
    results = make_results(args.benchmark, run, args.model, dataset, args.split, seconds,
                           _command_line(args), data, args.limit, loaded_model=model)
    _emit(results, args.out)
    return 0


def _run_summary(args) -> int:
    from eval.summary import write_summary

    table = write_summary(args.results, args.out)
    print(table, end="")
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _run_compare(args) -> int:
    from eval.compare import write_comparison

    print(write_comparison(args.results, args.out, args.labels, args.resamples, args.level, args.seed), end="")
    if args.out:
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m eval.cli ...``: the ``anyref eval`` command on its own (same arguments after ``eval``)."""
    parser = argparse.ArgumentParser(prog="anyref")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"anyref eval: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
