"""Mask groups (RAS): MaskRef references in ``segment`` and ``select``, caller and SAM candidates, empty groups, one
forward pass whatever the number of candidates, the group loss, further timm encoders, and bad input."""
import numpy as np
import pytest
import torch

from anyref import MaskRef
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from anyref.group_heads import group_loss
from anyref.mask_tokens import pool_masks, pooling_weights, position_map
from anyref.samples import ReferringSample
from tests.conftest import fit, rect_mask, scene, select_after_save_and_load

SHAPE = (96, 112)


def _candidates() -> np.ndarray:
    return np.stack([rect_mask(SHAPE, 10, 40, 10, 40), rect_mask(SHAPE, 50, 90, 60, 100),
                     rect_mask(SHAPE, 5, 30, 70, 110)])


class ForwardCounter:
    def __init__(self, module):
        self.calls = 0
        self._handle = module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))

    def remove(self):
        self._handle.remove()


def test_pooling_weights_are_area_fractions_in_each_frame():
    mask = np.zeros((64, 32), dtype=bool)
    mask[:32, :16] = True  # the top-left quarter
    frames = {"stretched": ((1.0, 0.5), (0.0, 0.0), 32, 2),     # 32 x 64 -> 32 x 32
              "padded": ((0.5, 0.5), (8.0, 0.0), 32, 4)}        # longest side 64 -> 32, centred with 8 px of pad
    weights = pooling_weights(mask, frames)
    torch.testing.assert_close(weights["stretched"], torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    assert weights["padded"][:, 0].sum() == 0 and weights["padded"][:, 3].sum() == 0  # padding holds no mask
    torch.testing.assert_close(weights["padded"][:2, 1], torch.ones(2))
    features = torch.arange(2 * 4 * 4, dtype=torch.float32).view(1, 2, 4, 4)
    pooled = pool_masks(features, weights["padded"][None], torch.tensor([0]))
    torch.testing.assert_close(pooled, features[0, :, :2, 1].mean(-1)[None])
    positions = position_map(4, 8)
    assert positions.shape == (16, 8) and positions.abs().max() <= 1


def test_group_loss_is_a_per_sample_mean_with_positive_weight():
    logits = torch.tensor([0.0, 0.0, 0.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    owners = torch.tensor([0, 0, 1])
    log2 = float(np.log(2))
    expected = ((5.0 * log2 + log2) / 2 + log2) / 2
    assert float(group_loss(logits, targets, owners, 5.0)) == pytest.approx(expected)
    empty = group_loss(torch.zeros(0, requires_grad=True), torch.zeros(0), torch.zeros(0, dtype=torch.long), 5.0)
    assert float(empty) == 0.0 and empty.requires_grad


def test_select_is_one_forward_pass_and_returns_the_group(tiny_model):
    image = scene(0)
    lm = ForwardCounter(tiny_model.llava.model.language_model)
    try:
        result = tiny_model.select(image, "all squares", candidates=_candidates())
        more = tiny_model.select(image, "all squares", candidates=np.concatenate([_candidates()] * 8))
    finally:
        lm.remove()
    assert lm.calls == 2  # one LLM forward per call, for 3 and for 24 candidates
    assert result.candidates.shape == (3, *SHAPE) and result.candidate_scores.shape == (3,)
    assert ((result.candidate_scores > 0) & (result.candidate_scores < 1)).all()
    assert result.masks.shape == (len(result.indices), *SHAPE) and result.source == "caller"
    np.testing.assert_array_equal(result.indices, np.flatnonzero(result.candidate_scores > 0.5))
    np.testing.assert_allclose(more.candidate_scores[:3], result.candidate_scores[:3], atol=0.2)  # same masks
    nothing = tiny_model.select(image, "all squares", candidates=_candidates(), threshold=0.999999)
    assert not nothing.found and nothing.masks.shape == (0, *SHAPE) and not nothing.union.any()
    try:  # without a threshold of its own, select takes the model's config.group_threshold
        tiny_model.set_group_threshold(0.999999)
        assert not tiny_model.select(image, "all squares", candidates=_candidates()).found
        given = tiny_model.select(image, "all squares", candidates=_candidates(), threshold=1e-6)
        assert given.indices.tolist() == [0, 1, 2]
    finally:
        tiny_model.set_group_threshold(0.5)
    # an empty threshold no candidate reaches answers with an empty group, whatever the membership threshold
    assert not tiny_model.select(image, "all squares", candidates=_candidates(), threshold=1e-6,
                                 empty_threshold=0.999999).found
    try:
        tiny_model.set_group_empty_threshold(1e-6)  # one every candidate passes leaves the membership threshold
        assert tiny_model.select(image, "all squares", candidates=_candidates(), threshold=1e-6).indices.tolist() \
            == [0, 1, 2]
        tiny_model.set_group_empty_threshold(0.999999)
        assert not tiny_model.select(image, "all squares", candidates=_candidates(), threshold=1e-6).found
    finally:
        tiny_model.set_group_empty_threshold(None)


def test_mask_references_in_segment_and_select(tiny_model):
    image = scene(1)
    ref = MaskRef(rect_mask(SHAPE, 10, 40, 10, 40))
    result = tiny_model.segment(image, ["the object left of", ref])
    assert result.masks.shape[1:] in ((), SHAPE) or len(result.masks) == 0
    group = tiny_model.select(image, ["everything the same colour as", ref], candidates=_candidates())
    assert group.candidates.shape[0] == 3
    # the MaskRef becomes one token after <mask-ref-pre>; candidates one after <mask-pool-pre>, then again
    sample = ReferringSample(image, ["same as", ref], task="select", candidates=_candidates(),
                             selected=np.zeros(3, dtype=bool))
    ids = prepare(sample, tiny_model.builder, with_answer=False).input_ids.tolist()
    assert ids.count(tiny_model.ids.mask_ref_pre) == 1 and ids.count(tiny_model.ids.mask_pool_pre) == 3
    assert ids.count(tiny_model.ids.ref_feature) == 1 + 3 + 3


def test_sam_generated_candidates(tiny_model):
    result = tiny_model.select(scene(2), "all squares", sam_options={
        "points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0, "box_nms_thresh": 1.0})
    assert result.source == "sam" and len(result.candidates) > 0
    assert result.candidates.shape[1:] == SHAPE and result.candidates.dtype == bool


def test_bad_group_inputs_say_what_to_fix(tiny_model):
    image = scene(0)
    with pytest.raises(ValueError, match="reference mask has shape"):
        tiny_model.segment(image, MaskRef(np.ones((10, 10), dtype=bool)))
    with pytest.raises(ValueError, match="reference mask is empty"):
        tiny_model.select(image, ["same as", MaskRef(np.zeros(SHAPE, dtype=bool))], candidates=_candidates())
    with pytest.raises(ValueError, match="candidates is empty"):
        tiny_model.select(image, "all squares", candidates=[])
    with pytest.raises(ValueError, match="candidates is empty"):
        tiny_model.select(image, "all squares", candidates=np.zeros((0, *SHAPE), dtype=bool))
    with pytest.raises(ValueError, match="N x 96 x 112"):
        tiny_model.select(image, "all squares", candidates=np.ones((2, 10, 10), dtype=bool))
    with pytest.raises(ValueError, match=r"candidate masks \[1\] are empty"):
        tiny_model.select(image, "all squares", candidates=np.stack([_candidates()[0], np.zeros(SHAPE, bool)]))
    with pytest.raises(ValueError, match="threshold"):
        tiny_model.select(image, "all squares", candidates=_candidates(), threshold=1.0)
    with pytest.raises(ValueError, match="group_threshold must be a probability"):
        tiny_model.set_group_threshold(0.0)
    with pytest.raises(ValueError, match="empty_threshold must be a probability"):
        tiny_model.select(image, "all squares", candidates=_candidates(), empty_threshold=1.5)
    with pytest.raises(ValueError, match="group_empty_threshold must be None"):
        tiny_model.set_group_empty_threshold(0.0)
    with pytest.raises(ValueError, match="no reference given"):
        tiny_model.select(image, None, candidates=_candidates())
    limit = tiny_model.llava.config.text_config.max_position_embeddings
    many = np.repeat(_candidates()[:1], limit // 2, axis=0)
    with pytest.raises(ValueError, match="fewer candidates"):
        tiny_model.select(image, "all squares", candidates=many)


def test_candidate_slots_hold_each_sample_s_candidates_in_order(tiny_model):
    """The group head reads the answer's copy of every candidate: the slots must be the answer's placeholders, and
    their inputs each sample's candidate tokens in the question's order (a shifted slot would still fit one
    memorised group, but could never learn a rule)."""
    image = scene(7)
    ref = MaskRef(_candidates()[1])
    samples = [ReferringSample(image, ["all squares"], task="select", candidates=_candidates(),
                               selected=np.array([True, False, True])),
               ReferringSample(image, ["everything left of", ref], task="select", candidates=_candidates()[::2],
                               selected=np.array([False, True]))]
    batch = collate([prepare(s, tiny_model.builder) for s in samples], tiny_model.ids.pad)
    with torch.no_grad():
        embeds = tiny_model.input_embeddings(batch, sam_embeddings=tiny_model.sam_embeddings(batch.sam_pixels))
    ids = batch.input_ids
    for row, sample in enumerate(samples):
        answer = batch.candidate_slots[row].nonzero().flatten()
        assert len(answer) == len(sample.candidates) and bool((answer >= batch.answer_starts[row]).all())
        assert bool((ids[row, answer] == tiny_model.ids.ref_feature).all())
        question = (ids[row, :batch.answer_starts[row]] == tiny_model.ids.ref_feature).nonzero().flatten()
        torch.testing.assert_close(embeds[row, answer], embeds[row, question[-len(answer):]])
    other = collate([prepare(samples[1], tiny_model.builder)], tiny_model.ids.pad)
    with torch.no_grad():
        alone = tiny_model.input_embeddings(other, sam_embeddings=tiny_model.sam_embeddings(other.sam_pixels))
    torch.testing.assert_close(embeds[1, batch.candidate_slots[1]], alone[0, other.candidate_slots[0]], atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize("reads_token", [False, True])
def test_group_head_learns_a_fixed_group(reads_token):
    """The group loss reaches the classifier, the mask projector and the LLM: a few steps fit one group, whether
    the head reads the candidates' last-layer states alone (RAS) or next to their mask tokens."""
    torch.manual_seed(0)
    model = build_tiny(seed=2, config_overrides={"group_head_reads_token": reads_token}).train()
    assert model.group_head.mlp[0].in_features == model.config.llava["text_config"]["hidden_size"] * (1 + reads_token)
    image = scene(4)
    selected = np.array([True, False, True])
    sample = ReferringSample(image, ["all squares"], task="select", candidates=_candidates(), selected=selected)
    batch = collate([prepare(sample, model.builder)], model.ids.pad)
    output = fit(model, batch, 40, lr=2e-3, clip=1.0)
    assert float(output.terms["group"]) < 0.1
    result = model.eval().select(image, "all squares", candidates=_candidates())
    np.testing.assert_array_equal(result.indices, np.flatnonzero(selected))


def test_a_group_head_that_reads_tokens_saves_loads_and_needs_them(tmp_path):
    model = build_tiny(seed=4, config_overrides={"group_head_reads_token": True}).eval()
    assert select_after_save_and_load(model, tmp_path / "m", _candidates(), image_seed=6).config.group_head_reads_token
    with pytest.raises(ValueError, match="pass tokens"):
        model.group_head(torch.zeros(2, model.group_head.mlp[0].in_features // 2))


def test_mask_token_norm_rescales_candidate_and_reference_tokens(tmp_path):
    image, ref = scene(7), MaskRef(_candidates()[1])
    sample = ReferringSample(image, ["everything left of", ref], task="select", candidates=_candidates(),
                             selected=np.array([True, False, False]))
    for norm in (0.0, 0.5):
        model = build_tiny(seed=3, config_overrides={"mask_token_norm": norm}).eval()
        batch = collate([prepare(sample, model.builder)], model.ids.pad)
        with torch.no_grad():
            embeds = model.input_embeddings(batch, sam_embeddings=model.sam_embeddings(batch.sam_pixels))
        tokens = embeds[batch.input_ids == model.ids.ref_feature]  # the reference and the candidates, twice
        assert len(tokens) == 1 + 2 * len(_candidates())
        if norm:
            torch.testing.assert_close(tokens.norm(dim=-1), torch.full((len(tokens),), norm))
            again = type(model).from_pretrained(model.save_pretrained(tmp_path / "m"))
            assert again.mask_projector.token_norm == norm
        else:
            assert not torch.allclose(tokens.norm(dim=-1), tokens.norm(dim=-1)[:1].expand(len(tokens)), atol=1e-3)


def test_timm_encoder_as_a_further_mask_source(tmp_path):
    model = build_tiny(seed=3, config_overrides={"mask_features": ("vision", "position", "sam", "timm:test_vit")})
    assert list(model.mask_sources) == ["vision", "position", "sam", "timm:test_vit"]
    assert model.mask_projector.mlp[0].in_features == sum(s.channels for s in model.mask_sources.values())
    result = model.select(scene(5), "all squares", candidates=_candidates())
    assert model.segment(scene(5), "the red circle").text is not None  # no mask token: SAM's embedding not needed
    again = type(model).from_pretrained(model.save_pretrained(tmp_path / "m")).select(
        scene(5), "all squares", candidates=_candidates())
    np.testing.assert_allclose(result.candidate_scores, again.candidate_scores, atol=1e-6)


def test_timm_weights_with_a_classifier_load_as_timm_would(tmp_path):
    """A timm checkpoint that carries its classifier (a fine-tuned model's) loads into the head-less encoder, and
    gives the features of the model it came from."""
    import timm
    from safetensors.torch import save_file

    from encoders.timm_features import TimmFeatures

    source = timm.create_model("test_vit", pretrained=False, num_classes=7).eval()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "vit.safetensors")
    encoder = TimmFeatures("test_vit", weights=tmp_path / "vit.safetensors")
    pixels = torch.randn(1, 3, encoder.image_size, encoder.image_size)
    expected = source.forward_intermediates(pixels, indices=1, intermediates_only=True)[-1]
    torch.testing.assert_close(encoder(pixels), expected)
