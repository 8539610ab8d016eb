"""eval.rank_threshold_probe: every threshold of ``rank_text_answers`` from one pass, as ``anyref eval`` scores it."""
import numpy as np
import pytest
import torch

from anyref import AnyRef
from eval.rank_threshold_probe import rank_threshold_probe, scores_at
from eval.synthref_eval import evaluate_synthref


def _record(probability, overlap, cover, target, candidate=True, found=False, verifier=None):
    return {"probability": probability, "overlap": overlap, "cover": cover, "target": target,
            "candidate": candidate, "found": found, "right": False, "verifier": verifier}


def test_scores_count_a_prompt_without_a_mask_by_its_target():
    text = [_record(0.95, 8, 10, 9), _record(0.6, 5, 12, 6), _record(None, 3, 4, 4, found=True),
            _record(0.0, 0, 7, 7, candidate=False)]
    no_target = [_record(0.95, 0, 5, 0), _record(0.3, 0, 5, 0)]
    high = scores_at(text, no_target, 0.9)
    assert high["text_ciou"] == pytest.approx((8 + 3) / (10 + 6 + 4 + 7)) and high["text_found_rate"] == 0.5
    assert high["no_target_no_mask_rate"] == 0.5
    every = scores_at(text, no_target, None)
    assert every["text_ciou"] == pytest.approx((8 + 5 + 3) / (10 + 12 + 4 + 7)) and every["text_found_rate"] == 0.75
    assert every["no_target_no_mask_rate"] == 0.0


def test_a_verifier_threshold_drops_the_candidates_it_rejects():
    text = [_record(0.95, 8, 10, 9, verifier=0.9), _record(0.95, 1, 12, 6, verifier=0.1),
            _record(None, 3, 4, 4, found=True)]
    no_target = [_record(0.95, 0, 5, 0, verifier=0.2), _record(0.95, 0, 5, 0, verifier=0.6)]
    checked = scores_at(text, no_target, 0.9, 0.5)
    assert checked["text_ciou"] == pytest.approx((8 + 3) / (10 + 6 + 4)) and checked["text_found_rate"] == 2 / 3
    assert checked["no_target_no_mask_rate"] == 0.5
    assert scores_at(text, no_target, 0.9, 0.05)["no_target_no_mask_rate"] == 0.0  # at least the threshold
    assert scores_at(text, no_target, 0.9)["text_found_rate"] == 1.0


def _assert_model_thresholds_give_eval(model, run):
    evaluated = evaluate_synthref(model, n=4, tasks=["text", "no_target"], split="val", progress=False)
    text = evaluated["per_sample"]["text"]
    at_model = run.metrics["by_threshold"][str(model.config.rank_text_answers)]
    assert at_model["text_ciou"] == pytest.approx(sum(text["intersection"][1:]) / sum(text["union"][1:]), abs=1e-6)
    assert at_model["text_found_rate"] == pytest.approx(np.mean(text["found"][1:]))
    assert at_model["no_target_no_mask_rate"] == pytest.approx(np.mean(evaluated["per_sample"]["no_target"]
                                                                       ["no_mask"][1:]))
    return at_model


def test_the_models_threshold_gives_what_anyref_eval_gives():
    model = AnyRef.from_pretrained("synthref-tiny")
    run = rank_threshold_probe(model, n=3, split="val", start=1, progress=False)
    _assert_model_thresholds_give_eval(model, run)
    assert run.counts["text"]["samples"] == 3 and run.settings["start"] == 1
    model.set_rank_text_answers(None)
    with pytest.raises(ValueError, match="does not rank"):
        rank_threshold_probe(model, n=1, progress=False)


def test_with_a_verifier_the_models_pair_gives_what_anyref_eval_gives():
    model = AnyRef.from_pretrained("synthref-tiny")
    model.set_rank_text_answers(0.3)
    torch.manual_seed(0)
    verifier = model.add_answer_verifier()  # untrained, but it answers the same every time
    with torch.no_grad():
        verifier.judge[-1].bias.fill_(0.3)  # about half its answers either side of 0.55
    model.set_verify_by_pixels(0.55)
    run = rank_threshold_probe(model, n=3, split="val", start=1, progress=False)
    at_model = _assert_model_thresholds_give_eval(model, run)
    assert run.metrics["by_pair"]["0.3,0.55"] == at_model and run.metrics["model_verifier_threshold"] == 0.55
    chosen = run.metrics["chosen_pair"]
    assert chosen is None or run.metrics["by_pair"][f"{chosen[0]},{chosen[1]}"]["no_target_no_mask_rate"] >= 0.92
