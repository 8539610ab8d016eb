"""The "verify" question: "Is <box> {expression} in this image?" answered "yes." or "no." - SynthRef's samples of it,
``AnyRef.verify``'s probability, and ``verify_answers``, which drops the masks the model's own check rejects
(that drop: tests/test_answer_checks.py)."""
import numpy as np
import pytest
import torch

from anyref import Box
from anyref.batching import collate, prepare
from anyref.config import AnyRefConfig
from anyref.samples import ReferringSample, verify_answer, verify_caption
from anyref.synthref import SynthRef, SynthRefConfig
from anyref.synthref.expressions import resolve
from anyref.synthref.scenes import SceneObject
from anyref.synthref.vocabulary import caption


def _objects(sample) -> list[SceneObject]:
    return [SceneObject(o["shape"], o["colour"], o["size"], mask, tuple(o["bbox"]), 1.0)
            for o, mask in zip(sample.meta["objects"], sample.meta["object_masks"])]


def test_synthref_verify_samples_box_the_described_object_or_its_closest_lookalike():
    world = SynthRef()
    samples = world.split("val", "verify", 60)
    margin = world.config.relation_margin * world.config.image_size
    yes = 0
    for sample in samples:
        box, expression = sample.references
        assert isinstance(box, Box) and expression == sample.meta["expression"]
        assert sample.task == "verify" and len(sample.masks) == 0
        [chosen] = sample.meta["target_ids"]
        described = resolve(_objects(sample), sample.meta["query"], margin)
        assert (described == [chosen]) == sample.meta["matches"]  # "yes" exactly when it is the one described
        boxed = sample.meta["objects"][chosen]
        said = caption(boxed["shape"], boxed["colour"], boxed["size"])
        assert sample.answer == [verify_answer(sample.meta["matches"], said)]  # "the large red circle: no."
        x0, y0, x1, y1 = boxed["bbox"]
        jitter = world.config.box_jitter
        assert abs(box.x0 - x0) <= jitter * (x1 - x0) + 1e-6 and abs(box.y1 - y1) <= jitter * (y1 - y0) + 1e-6
        yes += sample.meta["matches"]
    assert 0.3 < yes / len(samples) < 0.7


def test_verify_answers_plain_or_after_the_caption():
    plain = SynthRef(SynthRefConfig(verify_answer="plain")).split("val", "verify", 8)
    assert {s.answer[0] for s in plain} == {"yes.", "no."}
    assert verify_answer(True, "the red circle") == "the red circle: yes." and verify_answer(False) == "no."
    assert verify_caption(" the small red circle: no.") == "the small red circle" and verify_caption("no.") is None
    with pytest.raises(ValueError, match="verify_answer"):
        SynthRefConfig(verify_answer="maybe")


def test_the_verify_prompt_quotes_the_box_before_the_expression(tiny_model):
    sample = SynthRef().split("val", "verify", 1)[0]
    prepared = prepare(sample, tiny_model.builder)
    text = tiny_model.tokenizer.decode(prepared.input_ids)
    assert "Is <img.ref>" in text and f"</img.ref> {sample.meta['expression']} in this image?" in text
    answer = [i for i, label in zip(prepared.input_ids, prepared.labels) if label != -100]
    assert tiny_model.tokenizer.decode(answer).strip().startswith(sample.answer[0])


def test_answer_log_likelihood_is_the_training_loss_summed(tiny_model):
    samples = SynthRef().split("val", "verify", 3)
    batch = collate([prepare(s, tiny_model.builder) for s in samples], tiny_model.ids.pad)
    with torch.no_grad():
        together = tiny_model.answer_log_likelihoods(batch)
        for row, sample in enumerate(samples):
            alone = collate([prepare(sample, tiny_model.builder)], tiny_model.ids.pad)
            _, ce, *_ = tiny_model.answer_states(alone)
            tokens = int((alone.labels[:, 1:] != -100).sum())
            torch.testing.assert_close(together[row], -ce * tokens, rtol=1e-4, atol=1e-4)


def test_verify_compares_the_two_answers(tiny_model):
    sample = SynthRef().split("val", "verify", 1)[0]
    box, expression = sample.references
    generated = tiny_model._run(sample.image, [[box, expression]], "verify", False)[0][0].text
    said = verify_caption(generated)  # scored after the model's own caption, if it wrote one
    scores = []
    for yes in (True, False):
        asked = ReferringSample(sample.image, [box, expression], "verify", [verify_answer(yes, said)])
        with torch.no_grad():
            scores.append(tiny_model.answer_log_likelihoods(collate([prepare(asked, tiny_model.builder)],
                                                                     tiny_model.ids.pad))[0])
    probability = tiny_model.verify(sample.image, box, expression)
    assert probability == pytest.approx(float(torch.sigmoid(scores[0] - scores[1])), abs=1e-5)
    as_mask = tiny_model.verify(sample.image, box.mask(*sample.image.shape[:2]), expression)
    assert as_mask == pytest.approx(tiny_model.verify(sample.image, Box.around(box.mask(*sample.image.shape[:2])),
                                                      expression), abs=1e-6)


def test_verify_settings_and_regions_are_checked(tiny_model):
    llava = tiny_model.config.llava
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="verify_answers"):
            AnyRefConfig(llava=llava, verify_answers=bad)
    image = SynthRef().split("val", "verify", 1)[0].image
    with pytest.raises(ValueError, match="image's size"):
        tiny_model.verify(image, np.ones((5, 5), dtype=bool), "the red circle")
    with pytest.raises(ValueError, match="non-empty"):
        tiny_model.verify(image, np.zeros(image.shape[:2], dtype=bool), "the red circle")
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert Box.around(mask).as_tuple() == (3.0, 2.0, 9.0, 5.0)


def test_eval_commands_take_the_verify_threshold():
    from anyref.cli import build_parser
    from anyref.model_args import load_model

    parser = build_parser()
    args = parser.parse_args(["eval", "synthref", "--model", "synthref-tiny", "--verify-answers", "0.4"])
    assert load_model(args).config.verify_answers == 0.4
    args = parser.parse_args(["eval", "synthref", "--model", "synthref-tiny", "--verify-answers", "off"])
    assert load_model(args).config.verify_answers is None
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "synthref", "--model", "synthref-tiny", "--verify-answers", "often"])
