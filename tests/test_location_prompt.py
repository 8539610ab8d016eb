"""The location prompt (``obj_location_prompt``): each ``<obj>``'s map over the LLM's image tokens, given to SAM as
its dense prompt - SAM's own mask input, the same states in generation as in training, and the mask loss reaching
the locator."""
import numpy as np
import pytest
import torch

from anyref import OBJ, AnyRef, Box, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.heads import decode_masks, location_prompt
from train.objectives import TrainingObjective

from tests.conftest import fit, rect_mask, scene

LOCATED = {"image_token_merge": 2, "obj_location_prompt": True}


@pytest.fixture(scope="module")
def located_model():
    return build_tiny(seed=2, config_overrides=LOCATED)


def test_the_location_map_is_sams_mask_input(located_model):
    """A uniform map embeds as a blank mask input; a shift of every logit changes nothing; the decoder given the
    map decodes as SAM's own MaskDecoder with that dense prompt."""
    sam = located_model.sam
    tokens = located_model.llm_grid ** 2
    torch.manual_seed(0)
    logits = torch.randn(3, tokens)
    with torch.no_grad():
        dense = location_prompt(sam, logits)
        assert dense.shape == (3, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
        torch.testing.assert_close(location_prompt(sam, logits + 5.0), dense, atol=1e-5, rtol=1e-5)
        _, blank = sam.prompt_encoder(points=None, boxes=None, masks=torch.zeros(1, 1, *sam.prompt_encoder.mask_input_size))
        torch.testing.assert_close(location_prompt(sam, torch.zeros(1, tokens)), blank)
        assert not torch.allclose(dense[0], blank[0])
        embeddings = torch.randn(3, sam.prompt_encoder.embed_dim, *sam.prompt_encoder.image_embedding_size)
        prompts = torch.randn(3, sam.prompt_encoder.embed_dim)
        batched = decode_masks(sam, embeddings, prompts, dense)
        for i in range(3):
            expected, _ = sam.mask_decoder(image_embeddings=embeddings[i:i + 1], image_pe=sam.prompt_encoder.get_dense_pe(),
                                           sparse_prompt_embeddings=prompts[i:i + 1, None],
                                           dense_prompt_embeddings=dense[i:i + 1], multimask_output=False)
            torch.testing.assert_close(batched[i:i + 1], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="square grid"):
        location_prompt(sam, torch.zeros(1, tokens + 1))


def test_generation_keeps_the_image_states_of_a_teacher_forced_pass(located_model):
    """The image tokens' last-layer states a generated answer carries equal those of one plain forward of its
    prompt, whether the prefix ran once for the batch, every row ran whole, or set_image kept the prefix."""
    model = located_model
    image = scene(4, 128)
    refs = [["the red circle"], ["the small square left of the star"], [Box(5, 5, 40, 50)]]
    samples = [ReferringSample(image=image, references=r, task="segment") for r in refs]
    batch = collate([prepare(s, model.builder, with_answer=False) for s in samples], model.ids.pad, "left")
    with torch.no_grad():
        shared = model.generate(batch, max_new_tokens=2)
        whole = model.generate(batch, max_new_tokens=2, share_prefix=False)
        for row, sample in enumerate(samples):
            one = collate([prepare(sample, model.builder, with_answer=False)], model.ids.pad, "left")
            hidden = model.language_model(inputs_embeds=model.input_embeddings(one),
                                          attention_mask=one.attention_mask).last_hidden_state
            expected = model.image_token_states(one.input_ids, hidden)[0]
            assert shared[row].image_states.shape == (model.llm_grid ** 2, hidden.shape[-1])
            torch.testing.assert_close(shared[row].image_states, expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(whole[row].image_states, expected, atol=1e-5, rtol=1e-5)
    plain = build_tiny(seed=2, config_overrides={"image_token_merge": 2})
    with torch.no_grad():
        assert plain.generate(batch, max_new_tokens=1)[0].image_states is None  # kept only where needed


def test_the_mask_loss_reaches_the_locator_and_the_pointer_loss_supervises_it():
    model = build_tiny(seed=3, config_overrides=LOCATED).train()
    image = scene(5, 128)
    sample = ReferringSample(image, ["the thing"], "segment", ["it ", OBJ, "."],
                             rect_mask(image.shape[:2], 20, 60, 10, 50)[None])
    batch = collate([prepare(sample, model.builder)], model.ids.pad)
    objective = TrainingObjective(model)
    assert objective.trainer_heads()["pointer_heads"] == []  # the model's own locator is pointed
    output = objective(batch, pointer_weight=0.0)
    assert output.obj_locations.shape == (1, model.llm_grid ** 2)
    output.loss.backward()
    from_masks = model.obj_locator.key.weight.grad.clone()
    assert from_masks.abs().sum() > 0
    model.zero_grad()
    objective(batch, pointer_weight=1.0).loss.backward()
    assert not torch.allclose(model.obj_locator.key.weight.grad, from_masks)
    with pytest.raises(ValueError, match="image tokens' states"):
        model.decode_obj_masks(output.sam_embeddings[:1], output.obj_states.detach())


def test_a_located_model_segments_and_survives_save_and_load(tmp_path):
    """Trained for a few steps to answer with one mask, the model segments through the location prompt, and the
    same answer comes back after save and load."""
    model = build_tiny(seed=4, config_overrides=LOCATED).train()
    image = scene(6, 128)
    sample = ReferringSample(image, ["the square"], "segment", ["square ", OBJ, "."],
                             rect_mask(image.shape[:2], 20, 70, 30, 90)[None])
    batch = collate([prepare(sample, model.builder)], model.ids.pad)
    fit(model, batch, 60, lr=2e-3, clip=1.0)
    model.eval()
    first = model.segment(image, "the square")
    assert first.masks.shape == (1, *image.shape[:2]), first.text
    loaded = AnyRef.from_pretrained(model.save_pretrained(tmp_path / "located"))
    assert loaded.config.obj_location_prompt
    again = loaded.segment(image, "the square")
    assert again.text == first.text and np.array_equal(again.masks, first.masks)
