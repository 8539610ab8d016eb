"""The answer verifier (``AnyRefConfig.answer_verifier``, ``verify_by_pixels``): what it reads of a mask, what it
can learn from it, the check in ``segment``, and its fit command's round trip through a saved model."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyref import AnyRef
from anyref.answer_verifier import (OUTLINE_SIDE, STATISTICS, AnswerVerifier, outline_crops, prompt_ids,
                                    region_statistics, verifier_inputs)
from anyref.synthref import SynthRef
from anyref.tokens import SPECIAL_TOKENS
from train.verifier_fit import jittered, main


def test_region_statistics_read_colour_size_place_and_box():
    pixels = torch.zeros(3, 20, 40)
    pixels[2] = 1.0  # blue everywhere ...
    pixels[:, 2:6, 10:30] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # ... but a red bar
    masks = torch.zeros(2, 20, 40, dtype=torch.bool)
    masks[0, 2:6, 10:30] = True
    stats = region_statistics(pixels, masks)
    assert stats.shape == (2, STATISTICS)
    mean, spread, area, centre, size = stats[0, :3], stats[0, 3:6], stats[0, 6], stats[0, 7:9], stats[0, 9:]
    torch.testing.assert_close(mean, torch.tensor([1.0, 0.0, 0.0]))
    assert spread.abs().max() < 1e-3
    assert area == pytest.approx(80 / 800 * 10)
    torch.testing.assert_close(centre, torch.tensor([20 / 40, 4 / 20]))  # x, y as shares of the sides
    torch.testing.assert_close(size, torch.tensor([20 / 40, 4 / 20]))  # width, height
    assert not stats[1].any()  # an empty mask
    masks[1, 0:2, 0:40] = True  # half blue, half red: the spread shows it
    masks[1, 2:4, 10:30] = True
    assert region_statistics(pixels, masks)[1, [3, 5]].min() > 0.3  # red and blue; green is 0 everywhere


def test_outlines_keep_each_masks_aspect():
    masks = torch.zeros(3, 50, 50, dtype=torch.bool)
    masks[0, 20:24, 5:45] = True  # a bar ten times as wide as high
    masks[1, 10:30, 10:30] = True
    crops = outline_crops(masks)
    assert crops.shape == (3, 1, OUTLINE_SIDE, OUTLINE_SIDE)
    bar = crops[0, 0] > 0.5
    assert bar.any(0).sum() >= 5 * bar.any(1).sum()
    square = crops[1, 0] > 0.5
    assert square.any(0).sum() == square.any(1).sum() > OUTLINE_SIDE // 2
    assert not crops[2].any()
    assert outline_crops(masks[:0]).shape == (0, 1, OUTLINE_SIDE, OUTLINE_SIDE)


def test_inputs_say_what_they_cannot_read():
    image, masks = np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8), bool)
    with pytest.raises(ValueError, match="as many"):
        verifier_inputs([image], [masks], [])
    with pytest.raises(ValueError, match="no tokens"):
        verifier_inputs([image], [masks], [[]])
    with pytest.raises(ValueError, match="at its size"):
        verifier_inputs([image], [np.zeros((1, 8, 9), bool)], [[1]])
    inputs = verifier_inputs([image, image], [masks, np.zeros((2, 8, 8), bool)], [[1, 2], [3]])
    assert inputs.owner.tolist() == [0, 1, 1] and inputs.token_ids.tolist() == [[1, 2], [3, 0]]


def test_special_token_strings_in_a_prompt_are_read_as_text():
    model = AnyRef.from_pretrained("synthref-tiny")
    special = set(model.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
    ids = prompt_ids(model.tokenizer, ["the <obj> star", "<mask-ref>"])
    assert ids and not special & set(ids)


def test_jitter_grows_or_shrinks_a_mask_by_one_pixel():
    mask = np.zeros((1, 12, 12), bool)
    mask[0, 4:9, 4:9] = True
    seen = set()
    for seed in range(20):
        out = jittered(mask, np.random.default_rng(seed))[0]
        seen.add(int(out.sum()))
        assert (out >= mask[0]).all() or (out <= mask[0]).all()
    assert seen == {9, 25, 49}


RED, ORANGE = (230, 30, 20), (235, 120, 20)  # 0 and 28 degrees of hue, as SynthRef's red and orange


def _lookalikes(count: int, rng: np.random.Generator):
    """Scenes of two squares on grey that differ in colour (red, orange) or size; a prompt of two words (colour,
    size: ids 1-2, 3-4) names one square. Each question is a square and the prompt; the answer: it is the one."""
    images, masks, prompts, labels = [], [], [], []
    for _ in range(count):
        image = np.full((32, 32, 3), 128, np.uint8)
        colours = rng.permutation([0, 1]) if rng.random() < 0.5 else np.repeat(rng.integers(2), 2)
        sizes = rng.permutation([0, 1]) if colours[0] == colours[1] else np.repeat(rng.integers(2), 2)
        stack = np.zeros((2, 32, 32), bool)
        for k, left in enumerate((2, 18)):
            side = (5, 11)[sizes[k]]
            top = int(rng.integers(2, 32 - side - 2))
            stack[k, top:top + side, left:left + side] = True
            image[stack[k]] = (RED, ORANGE)[colours[k]]
        asked = int(rng.integers(2))
        images.append(image)
        masks.append(stack)
        prompts.append([1 + int(colours[asked]), 3 + int(sizes[asked])])
        labels += [k == asked for k in range(2)]
    return verifier_inputs(images, masks, prompts), torch.tensor(labels, dtype=torch.float32)


def test_the_verifier_tells_lookalikes_apart_by_their_pixels():
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    verifier = AnswerVerifier(vocab_size=5, width=16, text_width=16)
    optimizer = torch.optim.AdamW(verifier.parameters(), lr=3e-3)
    for _ in range(150):
        inputs, labels = _lookalikes(16, rng)
        loss = F.binary_cross_entropy_with_logits(verifier(inputs), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    inputs, labels = _lookalikes(200, rng)
    with torch.no_grad():
        accuracy = float(((verifier.eval()(inputs) > 0).float() == labels).float().mean())
    assert accuracy > 0.9, accuracy  # chance is 0.5: the two squares of a scene are one word apart


def test_the_check_needs_a_verifier(tiny_model):
    assert tiny_model.answer_verifier is None and tiny_model.config.verify_by_pixels is None
    with pytest.raises(ValueError, match="needs answer_verifier"):
        tiny_model.config.replace(verify_by_pixels=0.5)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        tiny_model.config.replace(answer_verifier=True, verify_by_pixels=1.0)
    with pytest.raises(ValueError, match="no answer verifier"):
        tiny_model._verifier_probabilities(np.zeros((8, 8, 3), np.uint8), [(np.ones((8, 8), bool), ["a"])], False)


def _answered_text_prompt(model):
    """A val text prompt the model answers with a mask, the check off."""
    for sample in SynthRef.for_model(model.config).split("val", "text", 10):
        result = model.segment(sample.image, sample.references)
        if result.found:
            return sample, result
    raise AssertionError("the shipped model answered none of 10 val text prompts")


def test_segment_drops_the_masks_the_verifier_rejects():
    model = AnyRef.from_pretrained("synthref-tiny")
    model.set_mask_crf(None)  # the masks as the check reads them
    sample, plain = _answered_text_prompt(model)
    box = SynthRef.for_model(model.config).split("val", "box", 1)[0]
    boxed = model.segment(box.image, box.references)
    torch.manual_seed(0)
    verifier = model.add_answer_verifier()
    model.set_verify_by_pixels(0.5)
    with torch.no_grad():
        verifier.judge[-1].bias.fill_(-30.0)  # says no to everything
    rejected = model.segment(sample.image, sample.references)
    assert not rejected.found and "<rejected>" in rejected.text
    assert model.verifier_scores(sample.image, sample.references[0], plain.masks).max() < 1e-6
    np.testing.assert_array_equal(model.segment(box.image, box.references).masks, boxed.masks)  # text alone
    with torch.no_grad():
        verifier.judge[-1].bias.fill_(30.0)  # says yes to everything
    kept = model.segment(sample.image, sample.references)
    np.testing.assert_array_equal(kept.masks, plain.masks)
    with pytest.raises(ValueError, match="text prompt"):
        model.verifier_scores(sample.image, None, plain.masks)
    with pytest.raises(ValueError, match="image's size"):
        model.verifier_scores(sample.image, "the star", plain.masks[:, :5])


def test_the_fit_saves_a_model_that_checks_by_pixels(tmp_path):
    out = tmp_path / "verified"
    assert main(["--steps", "4", "--eval-every", "2", "--val", "6", "--batch-size", "3", "--threshold", "0.4",
                 "--rank-threshold", "0.8", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "verifier_fit.json").read_text())
    assert [row["step"] for row in report["history"]] == [2, 4] and report["best_step"] in (2, 4)
    assert report["verify_by_pixels"] == 0.4 and report["rank_text_answers"] == 0.8
    loaded = AnyRef.from_pretrained(out)
    assert loaded.config.answer_verifier and loaded.config.verify_by_pixels == 0.4
    assert loaded.config.rank_text_answers == 0.8
    sample = SynthRef.for_model(loaded.config).split("val", "text", 1)[0]
    scores = loaded.verifier_scores(sample.image, sample.references[0], sample.masks)
    np.testing.assert_allclose(AnyRef.from_pretrained(out).verifier_scores(
        sample.image, sample.references[0], sample.masks), scores)
    torch.manual_seed(123)
    loaded.add_answer_verifier()  # a fresh one answers otherwise: the fitted weights were saved and loaded
    assert not np.allclose(loaded.verifier_scores(sample.image, sample.references[0], sample.masks), scores)
    for bad, message in ((["--threshold", "1.5"], "--threshold"), (["--steps", "0"], "--steps"),
                         (["--warmup", "1"], "--warmup")):
        with pytest.raises(ValueError, match=message):
            main(bad + ["--out", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()
