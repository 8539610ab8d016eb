"""Fitting a group head alone on cached inputs (train/group_head_fit.py): the cache holds exactly what the head
reads in ``select``, the fit keeps its best val epoch, and the saved model loads with the new head."""
import json

import pytest
import torch

from anyref import AnyRef
from anyref.batching import collate, prepare
from anyref.group_heads import GroupMapHead, PromptGroupHead
from anyref.synthref import SynthRef, SynthRefConfig
from train.group_head_fit import HEAD_KINDS, head_logits, main
from train.head_input_cache import (ANSWERED_PROMPTS, GROUPS_ONLY, answer_check_samples, cache_answer_inputs,
                                    cache_head_inputs, cache_stream_inputs)


@pytest.fixture(scope="module")
def shipped():
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    model.set_rank_text_answers(None)  # the check head was fitted on the model's own answers, not ranked ones
    model.set_verify_by_pixels(None)  # nor checked by the answer verifier, which comes after the check
    return model


@pytest.mark.parametrize("kind", ["prompt", "prompt-geometry", "ras-token"])
def test_cached_inputs_give_the_logits_select_computes(shipped, kind):
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    torch.manual_seed(0)
    model.replace_group_head(**HEAD_KINDS[kind])
    samples = SynthRef(SynthRefConfig()).split("val", "group", 6)
    cached = cache_head_inputs(model, samples, 6, chunk=4, progress=False)
    logits, targets, owners = head_logits(model.group_head, cached)
    expected = model.select_logits(collate([prepare(s, model.builder) for s in samples], model.ids.pad))
    torch.testing.assert_close(logits, expected, atol=2e-2, rtol=1e-2)  # the cache is float16
    assert targets.tolist() == [bool(x) for s in samples for x in s.selected]
    assert owners.tolist() == [i for i, s in enumerate(samples) for _ in s.selected]


def test_a_head_that_reads_the_image_is_refused(shipped):
    samples = SynthRef(SynthRefConfig()).split("val", "group", 1)
    cached = cache_head_inputs(shipped, samples, 1, progress=False)
    with pytest.raises(ValueError, match="not cached"):
        head_logits(GroupMapHead(192), cached)
    with pytest.raises(ValueError, match="ran out after 1 of 2"):
        cache_head_inputs(shipped, samples, 2, progress=False)


def test_two_processes_cache_the_stream_as_this_process_does(shipped):
    world = SynthRef(SynthRefConfig())
    here = cache_head_inputs(shipped, world.stream(3, GROUPS_ONLY), 5, chunk=2, progress=False)
    there = cache_stream_inputs("synthref-tiny", 3, 5, workers=2, chunk=2, progress=False)
    assert len(there) == 5
    for a, b in zip(here, there):
        torch.testing.assert_close(b.candidates.float(), a.candidates.float(), atol=2e-2, rtol=1e-2)
        torch.testing.assert_close(b.prompt.float(), a.prompt.float(), atol=2e-2, rtol=1e-2)
        assert torch.equal(a.selected, b.selected)
    with pytest.raises(ValueError, match="at least one sample"):
        cache_stream_inputs("synthref-tiny", 3, 0)


def test_answer_samples_are_the_answers_the_check_judges(shipped):
    """Each answer mask (the check off) becomes a group of one labelled by IoU >= 0.5 with the target, and the
    check head's probability on its cached inputs is what check_scores gives that mask."""
    world = SynthRef.for_model(shipped.config)
    prompts = world.split("val", "text", 4) + world.split("val", "no_target", 4)
    threshold = 0.85  # on here whatever the shipped config says: answer_check_samples turns it off, then restores it
    shipped.set_check_by_group_head(threshold)
    shipped.set_verify_by_pixels(0.5)  # turned off too, and restored
    checks = answer_check_samples(shipped, prompts)
    assert shipped.config.check_by_group_head == threshold  # restored after answering
    assert shipped.config.verify_by_pixels == 0.5
    shipped.set_verify_by_pixels(None)
    shipped.set_check_by_group_head(None)
    try:
        expected = []
        for prompt in prompts:
            masks = [m for m in shipped.segment(prompt.image, prompt.references).masks if m.any()]
            target = prompt.masks.any(0)
            expected += [(m, prompt, (m & target).sum() / (m | target).sum() >= 0.5) for m in masks]
    finally:
        shipped.set_check_by_group_head(threshold)
    assert len(checks) == len(expected) > 0
    for check, (mask, prompt, right) in zip(checks, expected):
        assert check.task == "select" and check.references == prompt.references
        assert torch.equal(torch.as_tensor(check.candidates), torch.as_tensor(mask[None]))
        assert check.selected.tolist() == [bool(right)]
        assert not right or prompt.source == "text"  # an answer to a no-target prompt is never right
    assert any(c.selected[0] for c in checks) and not all(c.selected[0] for c in checks)
    cached = cache_answer_inputs(shipped, prompts, len(prompts), chunk=3, progress=False)
    logits, targets, _ = head_logits(shipped.text_check_head, cached)
    assert targets.tolist() == [bool(c.selected[0]) for c in checks]
    scores = [float(shipped.check_scores(c.image, c.references, c.candidates)[0]) for c in checks]
    torch.testing.assert_close(logits.sigmoid(), torch.tensor(scores, dtype=logits.dtype), atol=1e-2, rtol=0)
    there = cache_stream_inputs("synthref-tiny", 3, 4, workers=2, chunk=2, progress=False, inputs="answers")
    here = cache_answer_inputs(shipped, world.stream(3, ANSWERED_PROMPTS), 4, chunk=2, progress=False)
    assert len(here) == len(there)
    for a, b in zip(here, there):
        torch.testing.assert_close(b.candidates.float(), a.candidates.float(), atol=2e-2, rtol=1e-2)
        assert torch.equal(a.selected, b.selected)


def test_fit_keeps_its_best_val_epoch_and_saves_a_model_that_loads(tmp_path):
    out = tmp_path / "fitted"
    assert main(["--samples", "48", "--val", "16", "--epochs", "3", "--batch-size", "8", "--threshold", "0.6",
                 "--workers", "1", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "group_fit.json").read_text())
    history = report["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert report["best_epoch"] == min(history, key=lambda r: r["val_loss"])["epoch"]
    assert set(report["val_by_threshold"]) >= {"0.5", "0.6"}
    # with an empty threshold equal to the membership threshold, the pair is the one threshold's group
    assert report["val_by_empty_threshold"]["0.6"]["0.6"] == report["val_by_threshold"]["0.6"]
    assert set(report["val_by_empty_threshold"]["0.6"]) == {t for t in report["val_by_threshold"] if float(t) <= 0.6}
    loaded = AnyRef.from_pretrained(out)
    assert isinstance(loaded.group_head, PromptGroupHead) and loaded.config.group_head_attends_prompt
    assert loaded.config.group_threshold == 0.6
    with pytest.raises(ValueError, match="at least 1"):
        main(["--samples", "0", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


def test_fit_with_texts_asked_as_groups_scores_them_apart(tmp_path):
    out = tmp_path / "with-texts"
    assert main(["--samples", "16", "--val", "8", "--text-samples", "16", "--text-val", "8", "--epochs", "2",
                 "--batch-size", "8", "--workers", "1", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "group_fit.json").read_text())
    assert report["text_samples"] == 16 and report["text_val_samples"] == 8
    assert set(report["text_val_by_threshold"]) == set(report["val_by_threshold"])
    assert report["text_val_by_threshold"] != report["val_by_threshold"]  # scored on the text samples alone
    with pytest.raises(ValueError, match="text-val"):
        main(["--text-samples", "4", "--text-val", "0", "--out", str(tmp_path / "none")])


def test_cached_text_select_inputs_give_the_logits_select_computes(shipped):
    samples = SynthRef(SynthRefConfig()).split("val", "text_select", 4)
    cached = cache_head_inputs(shipped, samples, 4, progress=False)
    logits, targets, _ = head_logits(shipped.group_head, cached)
    expected = shipped.select_logits(collate([prepare(s, shipped.builder) for s in samples], shipped.ids.pad))
    torch.testing.assert_close(logits, expected, atol=2e-2, rtol=1e-2)
    assert targets.sum() <= len(samples)


def test_a_check_head_fit_leaves_the_group_head_as_it_was(tmp_path, shipped):
    out = tmp_path / "check-head"
    assert main(["--check-head", "--text-samples", "16", "--text-val", "8", "--answer-samples", "8", "--answer-val",
                 "6", "--epochs", "2", "--batch-size", "8", "--check-threshold", "0.4", "--workers", "1", "--out",
                 str(out), "--no-progress"]) == 0
    report = json.loads((out / "check_fit.json").read_text())
    assert not (out / "group_fit.json").exists()
    assert report["fitted"] == "text_check_head" and report["samples"] == 0 and report["val_by_threshold"] is None
    assert report["head"] == "prompt-geometry"  # the shipped group head's kind, whatever --head says
    assert report["text_samples"] == 16 and report["text_val_samples"] == 8 and report["text_val_by_threshold"]
    assert report["answer_samples"] == 8 and 0 < report["answer_masks"] <= 8 and 0 < report["answer_val_masks"] <= 6
    loaded = AnyRef.from_pretrained(out)
    assert loaded.config.text_check_head and loaded.config.check_by_group_head == 0.4
    assert isinstance(loaded.text_check_head, PromptGroupHead)
    for name, value in shipped.group_head.state_dict().items():
        assert torch.equal(loaded.group_head.state_dict()[name], value), name
    assert not torch.equal(loaded.text_check_head.mlp[-1].weight, shipped.group_head.mlp[-1].weight)
    with pytest.raises(ValueError, match="text-samples"):
        main(["--check-head", "--out", str(tmp_path / "none")])
    with pytest.raises(ValueError, match="add --check-head"):
        main(["--answer-samples", "4", "--out", str(tmp_path / "none")])
    with pytest.raises(ValueError, match="needs --check-head"):
        main(["--check-threshold", "0.5", "--text-samples", "4", "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()
