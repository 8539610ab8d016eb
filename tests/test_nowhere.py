"""The location map's nowhere place (``obj_nowhere``): an ``<obj>`` taught on an empty target mask to point
nowhere, answered without a mask; the pointer targets, the SynthRef answers that teach it, and adding it to a
finished model."""
import numpy as np
import pytest
import torch

from anyref import OBJ, AnyRef, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.config import AnyRefConfig
from anyref.heads import placed_nowhere
from anyref.outputs import NOWHERE, mark_nowhere
from anyref.synthref import SynthRef, SynthRefConfig
from train.config import TrainConfig
from train.model_factory import build_model
from train.objectives import TrainingObjective, pointer_targets

from tests.conftest import rect_mask, scene

NOWHERE_MODEL = {"image_token_merge": 2, "obj_location_prompt": True, "obj_nowhere": True}


def test_nowhere_wins_when_it_holds_more_than_half_the_map():
    cells = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    # p(nowhere) = w / (1 + w) for a nowhere weight w against cells summing to 1
    logits = torch.cat([cells, torch.log(torch.tensor([[1.2], [0.8]]))], dim=1)
    assert placed_nowhere(logits).tolist() == [True, False]


def test_the_answer_text_marks_the_obj_placed_nowhere():
    assert mark_nowhere("the red circle <obj> and the star <obj>.", "<obj>", [True, False]) == \
        f"the red circle <obj> and the star {NOWHERE}."
    assert mark_nowhere("there is none.", "<obj>", []) == "there is none."
    with pytest.raises(ValueError, match="2 <obj> but 1"):
        mark_nowhere("<obj> <obj>", "<obj>", [True])


def test_pointer_targets_send_an_empty_target_nowhere():
    masks = np.zeros((2, 64, 64), dtype=bool)
    masks[0, :32, :32] = True  # the top-left quarter: cell 0 of a 2 x 2 grid
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    sample = ReferringSample(image, ["two things"], "segment", ["x ", OBJ, " y ", OBJ, "."], masks)
    model = build_tiny(seed=0, config_overrides=NOWHERE_MODEL)
    batch = collate([prepare(sample, model.builder)], model.ids.pad)
    torch.testing.assert_close(pointer_targets(batch, 2, nowhere=True),
                               torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]]))
    torch.testing.assert_close(pointer_targets(batch, 2), torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))


def test_nowhere_needs_a_location_map():
    with pytest.raises(ValueError, match="needs obj_location_prompt"):
        build_tiny(seed=0, config_overrides={"obj_nowhere": True})
    with pytest.raises(ValueError, match="no location map"):
        build_tiny(seed=0).add_nowhere()
    with pytest.raises(ValueError, match="already has"):
        build_tiny(seed=0, config_overrides=NOWHERE_MODEL).add_nowhere()


def test_a_model_learns_to_place_an_absent_object_nowhere(tmp_path):
    """Trained on one image, a present object (a mask) and an absent one (an empty mask, as SynthRef's
    "nowhere" no-target answers), the model gives the first its mask and the second none, marked in the text;
    a mask-less generation and a save and load keep that."""
    torch.manual_seed(0)
    model = build_tiny(seed=5, config_overrides=NOWHERE_MODEL).train()
    image = scene(7, 128)
    empty = np.zeros((1, *image.shape[:2]), dtype=bool)
    samples = [ReferringSample(image, ["the square"], "segment", ["square ", OBJ, "."],
                               rect_mask(image.shape[:2], 20, 70, 30, 90)[None]),
               ReferringSample(image, ["the star"], "segment", ["star ", OBJ, "."], empty)]
    batch = collate([prepare(s, model.builder) for s in samples], model.ids.pad)
    objective = TrainingObjective(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    for _ in range(80):
        output = objective(batch, pointer_weight=1.0)
        output.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
    assert output.obj_locations.shape == (2, model.llm_grid ** 2 + 1)
    model.eval()
    present, absent = model.segment(image, "the square"), model.segment(image, "the star")
    assert present.text == "square <obj>." and present.masks.shape == (1, *image.shape[:2]) and present.masks.any()
    assert absent.text == f"star {NOWHERE}." and not absent.found and absent.masks.shape == (0, *image.shape[:2])
    assert "placed nowhere" in absent.note
    # describe's caption drops the markers; its note still reads them from the answer
    caption = model.describe(image, "the star", with_masks=True)
    assert NOWHERE not in caption.text and NOWHERE in caption.answer and "placed nowhere" in caption.note
    loaded = AnyRef.from_pretrained(model.save_pretrained(tmp_path / "nowhere"))
    assert loaded.config.obj_nowhere
    assert loaded.segment(image, "the star").text == absent.text
    np.testing.assert_array_equal(loaded.segment(image, "the square").masks, present.masks)


def test_synthref_no_target_prompts_can_be_answered_nowhere():
    refusal = SynthRef(SynthRefConfig(seed=3)).sample_at(0, 0, {"no_target": 1})
    nowhere = SynthRef(SynthRefConfig(seed=3, no_target_answer="nowhere")).sample_at(0, 0, {"no_target": 1})
    assert OBJ not in refusal.answer and refusal.masks.shape[0] == 0
    assert nowhere.references == refusal.references and np.array_equal(nowhere.image, refusal.image)
    assert nowhere.answer == [refusal.meta["expression"], " ", OBJ, "."]
    assert nowhere.masks.shape == (1, *refusal.image.shape[:2]) and not nowhere.masks.any()
    assert nowhere.meta["mask_object_ids"] == [[]]
    with pytest.raises(ValueError, match="no_target_answer"):
        SynthRefConfig(no_target_answer="silence")


def test_a_training_config_adds_nowhere_to_a_finished_model(tmp_path):
    directory = build_tiny(seed=1, config_overrides={"image_token_merge": 2, "obj_location_prompt": True}) \
        .save_pretrained(tmp_path / "located")
    stages = [{"name": "s", "steps": 1, "trainable": "all"}]
    config = TrainConfig.from_dict({"model": {"init_from": str(directory), "add_nowhere": True},
                                    "mixture": {"synthref": {"ratio": 1.0}}, "stages": stages})
    model = build_model(config)
    assert model.config.obj_nowhere and model.obj_locator.nowhere is not None
    assert isinstance(model.config, AnyRefConfig)
    with pytest.raises(ValueError, match='"add_nowhere"'):
        TrainConfig.from_dict({"model": {"tiny": {}, "add_nowhere": True}, "mixture": {"synthref": {"ratio": 1.0}},
                               "stages": stages})


def test_only_real_obj_tokens_mark_masks_in_the_answer_text(tiny_model):
    """Ordinary tokens that spell "<obj>" stay text: the answer holds one mask marker, at its real <obj> token."""
    from anyref.outputs import LITERAL_MARK
    from anyref.tokens import encode_text

    tokenizer, obj = tiny_model.tokenizer, tiny_model.ids.obj
    spelled = encode_text(tokenizer, "a literal <obj> here and the mask")
    assert obj not in spelled
    text = tiny_model.decode_text(spelled + [obj] + encode_text(tokenizer, "."))
    assert text.count("<obj>") == 1 and text.endswith("the mask<obj>.")
    assert text.replace(LITERAL_MARK, "") == "a literal <obj> here and the mask<obj>."
    marked = mark_nowhere(text, "<obj>", [False])
    assert marked.endswith(f"the mask{NOWHERE}.") and marked.replace(LITERAL_MARK, "").startswith("a literal <obj>")


def test_spelled_markers_do_not_read_as_the_librarys_own():
    """An answer that spells "<rejected>" or "<nowhere>" as text is not taken for a rejected or placed-nowhere mask."""
    from anyref.outputs import LITERAL_MARK, REJECTED, SegmentResult, escape_answer_markers

    text = escape_answer_markers(f"no {REJECTED} and no {NOWHERE} here", "<obj>")
    assert REJECTED not in text and NOWHERE not in text
    assert text.replace(LITERAL_MARK, "") == f"no {REJECTED} and no {NOWHERE} here"
    empty = SegmentResult(np.zeros((0, 4, 4), bool), np.zeros(0, np.float32), text)
    assert empty.note == "no mask: the answer contains no <obj> token (the model found no such object)"
