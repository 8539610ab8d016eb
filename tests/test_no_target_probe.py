"""The no-target probe (eval/no_target_probe.py): its probability is the one inference acts on - the refusal token's
at greedy decoding's first step, or the nowhere place's share that decides whether an <obj> gets a mask - and its
AUC."""
import numpy as np
import pytest
import torch

from anyref import AnyRef
from anyref.samples import ReferringSample
from anyref.synthref import SynthRef
from eval.no_target_probe import main, nowhere_probabilities, refusal_probabilities, separation_auc
from eval.results import read_results


def test_the_probe_reads_the_first_answer_step_of_greedy_decoding(tmp_path):
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    samples = SynthRef().split("val", "no_target", 2) + SynthRef().split("val", "text", 1)
    probs = refusal_probabilities(model, samples, chunk=2)
    refusal_first = model.tokenizer.encode(" there", add_special_tokens=False)[-1]
    seen = []
    hook = model.llava.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.detach()))
    try:
        for sample, prob in zip(samples, probs):
            prompt = ReferringSample(image=sample.image, references=sample.references, task=sample.task)
            seen.clear()
            with torch.no_grad():
                model.generate(model._batch([prompt], False, 1), max_new_tokens=1)
            first_step = torch.softmax(seen[0].reshape(-1, seen[0].shape[-1])[-1].float(), -1)
            assert prob == pytest.approx(first_step[refusal_first].item(), abs=1e-4)
    finally:
        hook.remove()
    assert main(["--n", "2", "--out", str(tmp_path / "probe.json")]) == 0
    written = read_results(tmp_path / "probe.json")
    assert written["counts"] == {"no_target": {"samples": 2}, "text": {"samples": 2}}
    assert written["settings"]["decision"] == "nowhere"  # the shipped model decides by its nowhere place
    assert 0 <= written["metrics"]["auc"] <= 1
    assert written["command"] == "python -m eval.no_target_probe --n 2 --out " + str(tmp_path / "probe.json")


def test_the_nowhere_share_decides_whether_segment_draws_a_mask():
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    model.set_check_by_group_head(None)  # the nowhere place alone: the text check drops masks of its own,
    model.set_rank_text_answers(None)  # and the ranking answers from the peaks of a map placed nowhere too,
    model.set_verify_by_pixels(None)  # and the answer verifier drops masks of its own
    samples = SynthRef().split("val", "no_target", 4) + SynthRef().split("val", "text", 4)
    probs = nowhere_probabilities(model, samples)
    assert ((probs >= 0) & (probs <= 1)).all()
    drawn = [len(model.segment(s.image, s.references).masks) > 0 for s in samples]
    assert drawn == [bool(p <= 0.5) for p in probs]
    assert not all(drawn) and any(drawn)  # both outcomes among these samples, so the comparison says something


def test_separation_auc():
    assert separation_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert separation_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert separation_auc(np.array([0.5, 0.5]), np.array([0.5])) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        separation_auc(np.array([]), np.array([0.5]))
