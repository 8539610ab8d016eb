"""A text rank head that also reads each candidate's own pixels (``text_rank_head_reads_pixels``): the crops it
reads, what it can learn from them, and its round trip through the fit command and a saved model."""
import json

import numpy as np
import pytest
import torch

from anyref import AnyRef
from anyref.candidate_crops import CROP_CHANNELS, CROP_SIDE, candidate_crops
from anyref.group_heads import GEOMETRY_INPUTS, RelationGroupHead, group_loss
from anyref.synthref import SynthRef
from train.group_head_fit import main


def test_crops_cut_each_mask_out_of_sams_pixels():
    pixels = torch.zeros(3, 40, 40)
    pixels[1] = 1.0  # green everywhere ...
    pixels[:, 4:12, 20:28] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]  # ... but a red square
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)  # the image is 64 x 64; SAM's frame 32 x 32 of 40 x 40
    masks[0, 8:24, 40:56] = True  # the red square
    masks[1, 40:48, 8:40] = True  # a green bar four times as wide as high
    crops = candidate_crops(pixels, (32, 32), masks)
    assert crops.shape == (3, CROP_CHANNELS, CROP_SIDE, CROP_SIDE)
    square, bar, empty = crops
    centre = CROP_SIDE // 2
    inside = square[3] > 0.99  # where the crop samples only the mask (its edge blends with the margin)
    assert inside[centre, centre] and (square[0][inside] > 0.99).all() and square[1][inside].abs().max() < 1e-6
    assert square[3, 0, 0] < 1e-6 and square[:3, 0, 0].abs().max() < 1e-6  # the margin: outside the mask, zeroed
    assert bar[1, centre, centre] > 0.99 and bar[0][bar[3] > 0.99].abs().max() < 1e-6
    rows, cols = (bar[3] > 0.5).any(1).sum(), (bar[3] > 0.5).any(0).sum()
    assert 3 <= cols / rows <= 5  # the box is squared around the mask: the bar keeps its shape
    assert not empty.any()
    assert candidate_crops(pixels, (32, 32), masks[:0]).shape == (0, CROP_CHANNELS, CROP_SIDE, CROP_SIDE)
    with pytest.raises(ValueError, match="N x H x W"):
        candidate_crops(pixels, (32, 32), masks[0])


COLOURS = torch.eye(3)  # three colours of SAM-normalised pixels, one channel each


def _colour_groups(count: int, generator: torch.Generator):
    """Samples of 2-4 candidates, each a crop of one colour; the prompt asks one colour and the members are the
    candidates of that colour. Only the crops hold the colours: the candidates' own vectors are noise."""
    items = []
    for _ in range(count):
        n = int(torch.randint(2, 5, (1,), generator=generator))
        colours = torch.randint(0, 3, (n,), generator=generator)
        asked = int(colours[torch.randint(0, n, (1,), generator=generator)])
        crops = torch.zeros(n, CROP_CHANNELS, CROP_SIDE, CROP_SIDE)
        crops[:, :3] = COLOURS[colours][:, :, None, None]
        crops[:, 3] = 1.0
        items.append((crops, asked, colours == asked))
    return items


def _fit_and_score(head, train, test, steps: int = 250) -> float:
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    hidden = head.candidate_norm.normalized_shape[0] // 2
    words = torch.randn(3, 2 * hidden, generator=torch.Generator().manual_seed(1))  # a word per colour

    def batch(items):
        size = max(len(s) for _, _, s in items)
        crops = torch.zeros(len(items), size, CROP_CHANNELS, CROP_SIDE, CROP_SIDE)
        geometry = torch.zeros(len(items), size, GEOMETRY_INPUTS)
        for row, (c, _, s) in enumerate(items):
            crops[row, :len(s)] = c
            geometry[row, :len(s)] = 1.0  # a real candidate has geometry
        candidates = torch.randn(len(items), size, 2 * hidden, generator=torch.Generator().manual_seed(len(items)))
        prompt = torch.stack([words[asked] for _, asked, _ in items])[:, None]
        return candidates, prompt, torch.ones(len(items), 1, dtype=torch.bool), geometry, crops

    for step in range(steps):
        items = train[(step * 32) % len(train):][:32]
        logits = head(*batch(items))
        real = torch.cat([torch.arange(logits.shape[1]) < len(s) for _, _, s in items]).view(logits.shape)
        owners = torch.cat([torch.full((len(s),), k) for k, (_, _, s) in enumerate(items)])
        loss = group_loss(logits[real], torch.cat([s for _, _, s in items]).float(), owners, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = head(*batch(test))
    return float(np.mean([torch.equal(logits[k, :len(s)] > 0, s) for k, (_, _, s) in enumerate(test)]))


def test_a_head_that_reads_pixels_learns_what_only_the_pixels_hold():
    generator = torch.Generator().manual_seed(0)
    train, test = _colour_groups(3200, generator), _colour_groups(300, generator)
    torch.manual_seed(0)
    pixels = _fit_and_score(RelationGroupHead(16, width=16, heads=2, dim=32, reads_pixels=True), train, test)
    torch.manual_seed(0)
    blind = _fit_and_score(RelationGroupHead(16, width=16, heads=2, dim=32), train, test)
    assert pixels > 0.9 and pixels > blind + 0.3, (pixels, blind)
    head = RelationGroupHead(8, width=8, heads=2, dim=8, reads_pixels=True)
    with pytest.raises(ValueError, match="pass crops"):
        head(torch.randn(1, 2, 16), torch.randn(1, 1, 16), torch.ones(1, 1, dtype=torch.bool),
             torch.ones(1, 2, GEOMETRY_INPUTS))


def test_the_pixel_head_is_a_kind_of_rank_head(tiny_model):
    assert not tiny_model.config.text_rank_head
    with pytest.raises(ValueError, match="needs text_rank_head"):
        tiny_model.config.replace(text_rank_head_reads_pixels=True)
    with pytest.raises(ValueError, match="--reads-pixels"):
        main(["--reads-pixels", "--out", "unused"])
    with pytest.raises(ValueError, match="--crop-dropout"):
        main(["--rank-head", "--peak-samples", "2", "--crop-dropout", "0.5", "--out", "unused"])
    head = RelationGroupHead(8, width=8, heads=2, dim=8, reads_pixels=True, crop_dropout=0.5)
    inputs = (torch.randn(1, 2, 16), torch.randn(1, 1, 16), torch.ones(1, 1, dtype=torch.bool),
              torch.ones(1, 2, GEOMETRY_INPUTS), torch.rand(1, 2, CROP_CHANNELS, CROP_SIDE, CROP_SIDE))
    head.eval()  # the dropout is for training: a fitted head's answers do not change from call to call
    torch.testing.assert_close(head(*inputs), head(*inputs))


def test_the_fit_saves_a_model_whose_rank_head_reads_pixels(tmp_path):
    out = tmp_path / "ranked"
    assert main(["--rank-head", "--reads-pixels", "--peak-samples", "6", "--peak-val", "4", "--text-samples", "6",
                 "--text-val", "4", "--epochs", "2", "--batch-size", "4", "--rank-threshold", "0.01",
                 "--workers", "1", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "rank_fit.json").read_text())["head"] == "relation-pixels"
    loaded = AnyRef.from_pretrained(out)
    loaded.set_mask_crf(None)  # the answer as drawn
    loaded.set_rank_redraw_window(None)  # the chosen candidate itself, not drawn again
    assert loaded.config.text_rank_head_reads_pixels and loaded.text_rank_head.crop_encoder is not None
    prompt = SynthRef.for_model(loaded.config).split("val", "text", 1)[0]
    candidates = loaded.location_candidates(prompt.image, prompt.references)
    result = loaded.segment(prompt.image, prompt.references)
    # at 0.01 the best candidate is answered whatever its score, and the head scores by the crops it reads
    assert result.found and any(np.array_equal(result.masks[0], c) for c in candidates)
    with torch.no_grad():
        loaded.text_rank_head.crop_encoder[-1].bias.add_(5.0)  # what the pixels say changes the scores
    changed = loaded._candidate_probabilities(
        [_select(prompt, candidates)], None, False, loaded.text_rank_head)
    restored = AnyRef.from_pretrained(out)
    before = restored._candidate_probabilities([_select(prompt, candidates)], None, False, restored.text_rank_head)
    assert not np.allclose(changed, before)


def _select(prompt, candidates):
    from anyref.samples import ReferringSample
    return ReferringSample(image=prompt.image, references=prompt.references, task="select", candidates=candidates,
                           selected=np.zeros(len(candidates), dtype=bool))


def test_cached_crops_give_the_logits_select_computes():
    from anyref.batching import collate, prepare
    from train.group_head_fit import head_logits
    from train.head_input_cache import cache_head_inputs

    model = AnyRef.from_pretrained("synthref-tiny").eval()
    torch.manual_seed(0)
    head = model.add_text_rank_head(reads_pixels=True)
    samples = SynthRef.for_model(model.config).split("val", "text_select", 4)
    assert cache_head_inputs(model, samples, 1, progress=False)[0].crops is None  # only when asked for
    cached = cache_head_inputs(model, samples, 4, chunk=3, progress=False, crops=True)
    assert cached[0].crops.shape == (len(samples[0].candidates), CROP_CHANNELS, CROP_SIDE, CROP_SIDE)
    logits, _, _ = head_logits(head, cached)
    expected = model.select_logits(collate([prepare(s, model.builder) for s in samples], model.ids.pad), head=head)
    torch.testing.assert_close(logits, expected, atol=2e-2, rtol=1e-2)  # the cache is float16
