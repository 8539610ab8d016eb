"""``anyref bench``: latency, throughput and memory of the inference engine, and the ratios that show what its
design buys, measured in one run and written to a JSON file.

    anyref bench --out bench.json                      # the shipped synthref-tiny model on this machine's CPU
    anyref bench --model DIR --device cuda --out b.json

Measured (SynthRef test scenes; medians over ``--repeats`` timed runs after a warm-up):
- latency p50 / p95 of ``segment`` per reference type (text, box, example image, audio), nothing cached;
- references per second with 1 / 8 / 32 references on one image (``set_image`` + ``segment_many``);
- peak memory (CPU: the process's peak resident set; GPU: torch's peak allocation);
- refocus overhead: ``segment`` with refocusing vs the raw ``<obj>`` state, as a share of segment latency;
- 8 references on one image vs 1 (``segment_many`` vs ``segment``, nothing cached);
- engine vs the reference approach for a 20-token answer: the reference approach re-encodes the image for every
  query, decodes without a KV cache, and runs eager attention returning every layer's attention maps (how the
  public AnyRef code refocuses); ours caches the image and its prompt prefix, decodes with a KV cache and computes
  one attention row;
- ``select`` latency with 50 / 100 / 200 candidates on one image (one LLM forward each; set_image first), and how
  it grows: the ratio of the time per extra candidate between the two steps (1 = linear).
Full-size figures (LLaMA-7B + CLIP-L/336 + SAM-H + ImageBind-H, random weights, bf16) need a GPU (``--full``);
their parameter and memory budget is computed on every run (docs/performance.md).
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import time

import numpy as np
import torch

from anyref.model_args import resolve_device
from eval.provenance import run_provenance
from eval.results import cited_model

__all__ = ["register", "run_bench", "reference_segment", "full_size_budget"]

ANSWER_TOKENS = 20


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="measure the inference engine (latency, throughput, ratios)",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="synthref-tiny", help="model directory or shipped name (synthref-tiny)")
    parser.add_argument("--out", default="bench.json", help="results JSON (written atomically)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure (default 15)")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--full", action="store_true", help="also time the full-size architecture (GPU only)")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from eval.results import check_results_out, write_results

    if args.repeats < 3:
        raise ValueError(f"--repeats must be >= 3, got {args.repeats}")
    check_results_out(args.out)  # before the bench runs: a folder or an unwritable place fails now
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_bench(args.model, resolve_device(args.device), args.repeats, full=args.full)
    results["command"] = " ".join(["anyref", "bench", *sys.argv[2:]]) if sys.argv[1:2] == ["bench"] else ""
    # the figures first: a write that still fails (a full disk) must not lose them
    for key, value in results["ratios"].items():
        print(f"{key}: {value['value']:.3f} (target {value['target']})", flush=True)
    path = write_results(args.out, results)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _times(fn, repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - start)
    return out


def _summary(seconds: list[float]) -> dict:
    return {"p50_ms": 1e3 * float(np.percentile(seconds, 50)), "p95_ms": 1e3 * float(np.percentile(seconds, 95)),
            "runs": len(seconds)}


def _interleaved(fns: dict, repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Time several functions alternately, so that drifting machine load hits them alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ------------------------------------------------------------------------------------ reference approach
@torch.no_grad()
def reference_segment(model, image: np.ndarray, refs: list, new_tokens: int = ANSWER_TOKENS):
    """The reference implementation's way, for comparison: encode the image (vision tower and SAM) for this
    query, decode ``new_tokens`` greedily by re-running the whole sequence every step (no KV cache) with eager
    attention returning every layer's maps, refocus each ``<obj>`` from the last layer's maps, then decode masks.
    Returns the number of masks."""
    from anyref.batching import collate, prepare
    from anyref.refocus import refocus
    from anyref.samples import ReferringSample

    if model.config.image_reread != "off":
        raise ValueError("the reference path reads the image once, before the question: bench a model whose "
                         'image_reread is "off"')
    sample = ReferringSample(image=image, references=refs, task="segment")
    batch = collate([prepare(sample, model.builder, with_answer=False)], model.ids.pad).to(model.device, model.dtype)
    lm = model.llava.model.language_model
    config = lm.config
    previous = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        embeds = model.input_embeddings(batch)
        prompt_length = embeds.shape[1]
        states = []
        image_states = None
        for _ in range(new_tokens):
            out = lm(inputs_embeds=embeds, output_attentions=True, use_cache=False)
            hidden = out.last_hidden_state[0]  # L x H
            if image_states is None:
                image_states = model.image_token_states(batch.input_ids, out.last_hidden_state[:, :prompt_length])
            next_id = model.llava.lm_head(hidden[-1]).argmax(-1)
            if int(next_id) == model.ids.obj:
                weights = out.attentions[-1][0, :, -1].mean(0)  # heads averaged: L
                span = torch.arange(hidden.shape[0], device=hidden.device)
                answer = (span >= prompt_length)[None]
                states.append(refocus(hidden[-1:], hidden[None], weights[None].float(), answer,
                                      model.refocus_lambda)[0])
            embeds = torch.cat([embeds, model.llava.get_input_embeddings()(next_id.view(1, 1))], dim=1)
    finally:
        config._attn_implementation = previous
    embedding = model.sam_embeddings(batch.sam_pixels)
    if states:
        states = torch.stack(states)
        low, _ = model.decode_obj_masks(embedding, states, image_states.expand(len(states), -1, -1))
        model.refine_obj_masks(embedding, states, low, batch.sam_sizes * len(states), batch.image_sizes * len(states))
    return len(states)


# ------------------------------------------------------------------------------------------- the bench
def _scenes(kind: str, n: int):
    from anyref.synthref import SynthRef

    task = {"text": "text", "box": "box", "example": "example", "audio": "audio1"}[kind]
    return SynthRef().split("test", task, n)


@torch.no_grad()  # the timed calls include the model's internal steps, which do not switch autograd off
def run_bench(model_name: str, device: str = "cpu", repeats: int = 15, full: bool = False) -> dict:
    from anyref.api import AnyRef

    device = torch.device(device)
    model = AnyRef.from_pretrained(model_name, device=device)
    latency = {}
    for kind in ("text", "box", "example", "audio"):
        samples = _scenes(kind, repeats + 1)
        state = {"i": 0}

        def one(samples=samples, state=state):
            sample = samples[state["i"] % len(samples)]
            state["i"] += 1
            model.segment(sample.image, sample.references, allow_untrained=True)

        latency[kind] = _summary(_times(one, repeats, device))

    texts = _scenes("text", 32)
    image = texts[0].image
    expressions = [s.references[0] for s in texts]
    throughput = {}
    for count in (1, 8, 32):
        refs = expressions[:count]

        def many(refs=refs):
            model.set_image(image)
            model.segment_many(None, refs)

        seconds = float(np.median(_times(many, max(3, repeats // 3), device)))
        throughput[str(count)] = {"refs_per_second": count / seconds, "batch_ms": 1e3 * seconds}
    model.set_image(None)

    # ratios, each from interleaved runs of the same inputs
    query = texts[1]
    fixed = {"max_new_tokens": ANSWER_TOKENS, "stop_at_eos": False}

    def segment_with(refocus: bool):
        def fn():
            generations, batch, sam = model._run(query.image, [query.references], "segment", True,
                                                      refocus=refocus, **fixed)
            model._masks_for(generations, batch, sam)
        return fn

    # the difference is ~1% of a call, well inside one call's jitter: four times the runs for a stable median
    times = _interleaved({"on": segment_with(True), "off": segment_with(False)}, 4 * repeats, device)
    # the median of the paired differences: each pair ran back to back, so slow drifts of the machine cancel
    paired = np.asarray(times["on"]) - np.asarray(times["off"])
    refocus_overhead = float(np.median(paired)) / float(np.median(times["on"]))

    eight = expressions[:8]
    times = _interleaved({
        "one": lambda: model.segment(image, eight[0]),
        "eight": lambda: model.segment_many(image, eight),
    }, repeats, device)
    eight_vs_one = float(np.median(times["eight"])) / float(np.median(times["one"]))

    queries = [[e] for e in expressions[:8]]

    def engine():
        model.set_image(image)
        for refs in queries:
            generations, batch, sam = model._run(None, [refs], "segment", True, **fixed)
            model._masks_for(generations, batch, sam)
        model.set_image(None)

    def reference():
        for refs in queries:
            reference_segment(model, image, refs)

    times = _interleaved({"engine": engine, "reference": reference}, max(3, repeats // 3), device)
    engine_speedup = float(np.median(times["reference"])) / float(np.median(times["engine"]))

    results = {
        "benchmark": "bench", "model": cited_model(model_name), "device": str(device), "dtype": str(model.dtype),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
        "latency_per_reference": latency,
        "throughput_one_image": throughput,
        "peak_memory_mb": _peak_memory_mb(device),
        "ratios": {
            "refocus_overhead": {"value": refocus_overhead, "target": "<= 0.03",
                                 "what": f"median(segment with refocus - without, run in pairs) / median(with), "
                                         f"{ANSWER_TOKENS}-token answers"},
            "eight_refs_vs_one": {"value": eight_vs_one, "target": "<= 2.5",
                                  "what": "segment_many(image, 8 refs) / segment(image, 1 ref), nothing cached"},
            "engine_vs_reference": {"value": engine_speedup, "target": ">= 3",
                                    "what": f"8 queries on one image, {ANSWER_TOKENS}-token answers: reference "
                                            "approach time / engine time"},
        },
        "answer_tokens": ANSWER_TOKENS,
        # text answers are checked or ranked by one more forward per call when these are on (ranking also draws its
        # candidates): they count in the text latency, the throughput and eight_refs_vs_one (both sides), not in the
        # two ratios timed on model._run
        "answer_checks": {"verify_answers": model.config.verify_answers,
                          "check_by_group_head": model.config.check_by_group_head,
                          "rank_text_answers": model.config.rank_text_answers,
                          "verify_by_pixels": model.config.verify_by_pixels},
        "select_scaling": _select_scaling(model, repeats, device),
        "full_size_budget": full_size_budget(),
        "provenance": run_provenance(model_name, model),
    }
    if full:
        results["full_size"] = _full_size(device, repeats)
    return results


def _select_scaling(model, repeats: int, device: torch.device) -> dict:
    """``select`` on one SynthRef group scene with its candidates repeated to 50 / 100 / 200 masks."""
    from anyref.synthref import SynthRef

    sample = SynthRef().split("test", "group", 1)[0]
    limit = model.llava.config.text_config.max_position_embeddings
    counts = [c for c in (50, 100, 200) if 3 * c + model.llm_grid ** 2 + 64 < limit]
    model.set_image(sample.image)
    lm = model.llava.model.language_model
    forwards = []
    handle = lm.register_forward_hook(lambda *_: forwards.append(1))
    out: dict = {"candidates": counts, "latency": {}, "llm_forwards_per_call": {}}
    try:
        for count in counts:
            candidates = np.resize(sample.candidates, (count, *sample.candidates.shape[1:]))
            forwards.clear()
            model.select(None, sample.references, candidates=candidates, allow_untrained=True)
            out["llm_forwards_per_call"][str(count)] = len(forwards)
            out["latency"][str(count)] = _summary(_times(
                lambda c=candidates: model.select(None, sample.references, candidates=c, allow_untrained=True),
                max(3, repeats // 3), device))
    finally:
        handle.remove()
        model.set_image(None)
    if len(counts) == 3:
        t = [out["latency"][str(c)]["p50_ms"] for c in counts]
        out["ms_per_candidate"] = [(t[1] - t[0]) / (counts[1] - counts[0]), (t[2] - t[1]) / (counts[2] - counts[1])]
        out["growth"] = out["ms_per_candidate"][1] / out["ms_per_candidate"][0]
    return out


# --------------------------------------------------------------------------------------------- full size
def full_size_budget(prompt_tokens: int = 600, answer_tokens: int = 32) -> dict:
    """Parameters of the full-size architecture counted on the meta device (no memory), their bf16 bytes, the KV
    cache of one query, and SAM-H's image encoder activations at 1024 px, in GiB."""
    from anyref.builders import full_size_parts

    parts = full_size_parts()
    params = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items()}
    text = parts["llava"].config.text_config
    kv_heads = getattr(text, "num_key_value_heads", text.num_attention_heads)
    head_dim = text.hidden_size // text.num_attention_heads
    kv_bytes = 2 * text.num_hidden_layers * kv_heads * head_dim * (prompt_tokens + answer_tokens) * 2
    # SAM-H: 64 x 64 tokens x 1280 wide; the widest live activation is the MLP's 4x expansion, plus attention
    # scores of the global layers (16 heads x 4096^2) in bf16
    sam_act = (64 * 64 * 1280 * 4 + 16 * 4096 * 4096) * 2
    gib = 2 ** 30
    weights = sum(params.values()) * 2
    return {"parameters": params, "weights_gib_bf16": weights / gib, "kv_cache_gib_per_query": kv_bytes / gib,
            "sam_encoder_peak_activation_gib": sam_act / gib,
            "total_inference_gib_estimate": (weights + kv_bytes + sam_act) / gib,
            "fits_24_gib": (weights + kv_bytes + sam_act) / gib < 24}


def _full_size(device: torch.device, repeats: int) -> dict:
    if device.type != "cuda":
        return {"skipped": "the full-size architecture is timed on a GPU only"}
    from anyref.builders import build_full_size_random

    torch.cuda.reset_peak_memory_stats(device)
    model = build_full_size_random(device=device, dtype=torch.bfloat16)
    sample = _scenes("text", 1)[0]
    image = np.kron(sample.image, np.ones((8, 8, 1), dtype=np.uint8))  # 1024 px
    model.config = model.config.replace(max_new_tokens=ANSWER_TOKENS)
    latency = _summary(_times(lambda: model.segment(image, "the small red circle", allow_untrained=True),
                              repeats, device))
    return {"segment_latency": latency, "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anyref")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
