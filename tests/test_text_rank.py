"""``rank_text_answers``: a text answer chosen again among the masks drawn at its location map's peaks, by the text
rank head (a relation network over the candidates), and the pieces it is made of."""
import argparse
import json

import numpy as np
import pytest
import torch

from anyref import AnyRef, Box
from anyref.candidates import distinct_masks, grows
from anyref.config import AnyRefConfig
from anyref.group_heads import GEOMETRY_INPUTS, PromptGroupHead, RelationGroupHead, group_loss
from anyref.heads import map_peaks, peak_windows
from anyref.model_args import add_inference_settings, inference_setting_words
from anyref.synthref import SynthRef
from train.group_head_fit import main
from train.head_input_cache import peak_rank_samples


@pytest.fixture(scope="module")
def ranking():
    """The shipped model with a new, untrained rank head on (threshold 0.3), its CRF and redraw off: the candidates
    as drawn."""
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    torch.manual_seed(0)
    model.add_text_rank_head()
    model.set_rank_text_answers(0.3)
    model.set_check_by_group_head(None)
    model.set_verify_by_pixels(None)  # the ranking alone
    model.set_mask_crf(None)
    model.set_rank_redraw_window(None)
    return model


def test_peaks_are_the_highest_cells_kept_apart():
    cells = torch.zeros(4, 4)
    cells[0, 0], cells[0, 1], cells[3, 3], cells[2, 0] = 5.0, 4.0, 3.0, 2.0
    assert map_peaks(cells, 3, spacing=2) == [(0, 0), (3, 3), (2, 0)]  # (0, 1) is next to (0, 0)
    assert map_peaks(cells, 2, spacing=1) == [(0, 0), (0, 1)]
    windows = peak_windows(cells, [(0, 0)]).view(1, 4, 4)
    assert windows[0, 0, 1] == 4.0 and windows[0, 1, 1] == 0.0 and windows[0, 2, 0] == -30.0
    wide = peak_windows(cells, [(0, 0)], half_width=2).view(1, 4, 4)
    assert wide[0, 2, 0] == 2.0 and wide[0, 2, 2] == 0.0 and wide[0, 3, 3] == -30.0
    with pytest.raises(ValueError, match="spacing"):
        map_peaks(cells, 3, spacing=0)


def test_distinct_masks_drop_specks_and_repeats():
    logits = -torch.ones(4, 10, 10)
    logits[0, :5, :5] = 1  # 25 pixels
    logits[1, :5, :4] = 1  # 20 pixels, IoU 0.8 with the first: the same object
    logits[2, 0, :3] = 1   # 3 pixels: a speck
    logits[3, 6:, 6:] = 1  # 16 pixels elsewhere
    assert distinct_masks(logits) == [0, 3]
    assert distinct_masks(logits, min_pixels=1, duplicate_iou=0.9) == [0, 1, 2, 3]


def test_a_redraw_counts_only_when_it_grows_the_mask():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:5, :5] = True  # 25 pixels
    grown, moved = mask.clone(), torch.zeros_like(mask)
    grown[:8, :8] = True
    grown[0, :3] = False  # 22 of the 25 kept: 88%
    moved[3:, 3:] = True
    assert not grows(mask, grown) and grows(mask, grown, cover=0.85)
    assert not grows(mask, moved) and grows(mask, mask)
    assert grows(torch.zeros_like(mask), moved)


def test_the_command_line_reads_the_redraw_window():
    parser = argparse.ArgumentParser()
    add_inference_settings(parser)
    assert parser.parse_args(["--rank-redraw-window", "2"]).set_rank_redraw_window == 2
    args = parser.parse_args(["--rank-redraw-window", "off"])
    assert args.set_rank_redraw_window is None and inference_setting_words(args) == ["--rank-redraw-window", "off"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--rank-redraw-window", "1.5"])  # cells: a whole number


def test_a_redraw_with_a_wider_window_draws_a_large_object_whole():
    """Val text prompt 3, "the large yellow circle": the shipped model's chosen candidate, drawn within 3 x 3 cells of
    its peak, is cut by a straight edge; drawn again within 5 x 5 cells it keeps that mask and covers more of the
    target (the CRF and the verifier off: the masks as drawn)."""
    model = AnyRef.from_pretrained("synthref-tiny").eval()
    model.set_mask_crf(None)
    model.set_verify_by_pixels(None)
    prompt = SynthRef.for_model(model.config).split("val", "text", 4)[3]
    target = prompt.masks.any(0)
    answers = {}
    for window in (None, 2):
        model.set_rank_redraw_window(window)
        answers[window] = model.segment(prompt.image, prompt.references)
        assert answers[window].found
    cut, whole = answers[None].masks[0], answers[2].masks[0]
    iou = {name: (mask & target).sum() / (mask | target).sum() for name, mask in (("cut", cut), ("whole", whole))}
    assert (cut & whole).sum() >= 0.9 * cut.sum() and whole.sum() > cut.sum()
    assert iou["whole"] > iou["cut"] + 0.05, iou
    for result in model.segment_many(prompt.image, [prompt.references, prompt.references]):  # rows redrawn together
        assert np.array_equal(result.masks, answers[2].masks)


def test_the_ranking_setting_is_validated(tiny_model):
    llava = tiny_model.config.llava
    with pytest.raises(ValueError, match="rank_text_answers"):
        AnyRefConfig(llava=llava, rank_text_answers=1.0, text_rank_head=True, obj_location_prompt=True)
    with pytest.raises(ValueError, match="text_rank_head"):
        AnyRefConfig(llava=llava, rank_text_answers=0.5, obj_location_prompt=True)
    with pytest.raises(ValueError, match="obj_location_prompt"):
        AnyRefConfig(llava=llava, rank_text_answers=0.5, text_rank_head=True, obj_location_prompt=False)
    with pytest.raises(ValueError, match="rank_redraw_window"):
        AnyRefConfig(llava=llava, rank_redraw_window=1)  # the candidates' own window: no redraw


def test_the_peak_setting_decides_the_candidates_and_is_saved(ranking, tmp_path):
    prompt = SynthRef.for_model(ranking.config).split("val", "text", 1)[0]
    drawn = ranking.location_candidates(prompt.image, prompt.references)
    assert (ranking.config.location_peaks, ranking.config.location_peak_spacing) == (6, 2)  # defaults: as shipped
    try:
        ranking.set_location_peaks(1, 1)
        one = ranking.location_candidates(prompt.image, prompt.references)
        assert len(one) == 1 and np.array_equal(one[0], drawn[0])  # the strongest peak, drawn the same
        ranking.set_location_peaks(2, 2)  # the first two of the six peaks: greedy, the same spacing
        two = ranking.location_candidates(prompt.image, prompt.references)
        assert 1 <= len(two) <= 2 and np.array_equal(two, drawn[:len(two)])
        ranking.set_location_peaks(16, 1)
        ranking.set_rank_redraw_window(2)
        ranking.save_pretrained(tmp_path / "peaks")
        saved = json.loads((tmp_path / "peaks" / "config.json").read_text())
        assert (saved["location_peaks"], saved["location_peak_spacing"], saved["rank_redraw_window"]) == (16, 1, 2)
        with pytest.raises(ValueError, match="at least 1"):
            ranking.set_location_peaks(4, 0)
    finally:
        ranking.set_location_peaks(6, 2)
        ranking.set_rank_redraw_window(None)  # as the fixture set it


def _leftmost_groups(count: int, generator: torch.Generator):
    """Groups of 2-4 candidates at random places; the member is the one furthest left (x, geometry's first
    column). A candidate's own place does not tell whether it is a member (x is uniform): only a comparison with
    the others does."""
    items = []
    for _ in range(count):
        n = int(torch.randint(2, 5, (1,), generator=generator))
        geometry = torch.zeros(n, GEOMETRY_INPUTS)
        geometry[:, :5] = torch.rand(n, 5, generator=generator) * 10
        selected = torch.zeros(n, dtype=torch.bool)
        selected[geometry[:, 0].argmin()] = True
        items.append((geometry, selected))
    return items


def _fit_and_score(head, train, test, steps: int = 300) -> float:
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    hidden = head.candidate_norm.normalized_shape[0] // 2

    def batch(items):
        size = max(len(g) for g, _ in items)
        geometry = torch.zeros(len(items), size, GEOMETRY_INPUTS)
        for row, (g, _) in enumerate(items):
            geometry[row, :len(g)] = g
        generator = torch.Generator().manual_seed(len(items))
        candidates = torch.randn(len(items), size, 2 * hidden, generator=generator)
        prompt = torch.randn(len(items), 3, 2 * hidden, generator=generator)
        return candidates, prompt, torch.ones(len(items), 3, dtype=torch.bool), geometry

    for step in range(steps):
        items = train[(step * 32) % len(train):][:32]
        logits = head(*batch(items))
        real = torch.cat([torch.arange(logits.shape[1]) < len(g) for g, _ in items]).view(logits.shape)
        owners = torch.cat([torch.full((len(g),), k) for k, (g, _) in enumerate(items)])
        loss = group_loss(logits[real], torch.cat([s for _, s in items]), owners, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = head(*batch(test))
    # membership, not ranking: a head scoring each candidate alone can still order them by x
    return float(np.mean([torch.equal(logits[k, :len(g)] > 0, s) for k, (g, s) in enumerate(test)]))


def test_the_relation_head_compares_candidates_where_the_prompt_head_cannot():
    generator = torch.Generator().manual_seed(0)
    train, test = _leftmost_groups(3200, generator), _leftmost_groups(300, generator)
    torch.manual_seed(0)
    relation = _fit_and_score(RelationGroupHead(16, width=16, heads=2, dim=32), train, test)
    torch.manual_seed(0)
    alone = _fit_and_score(PromptGroupHead(16, width=16, heads=2, geometry=True), train, test)
    assert relation > 0.9 and relation > alone + 0.15, (relation, alone)


def test_padding_does_not_change_a_samples_logits():
    torch.manual_seed(0)
    head = RelationGroupHead(8, width=8, heads=2, dim=8).eval()
    candidates, prompt = torch.randn(1, 3, 16), torch.randn(1, 2, 16)
    geometry = torch.rand(1, 3, GEOMETRY_INPUTS) + 0.1
    alone = head(candidates, prompt, torch.ones(1, 2, dtype=torch.bool), geometry)
    padded = head(torch.cat([candidates, torch.zeros(1, 2, 16)], 1), prompt, torch.ones(1, 2, dtype=torch.bool),
                  torch.cat([geometry, torch.zeros(1, 2, GEOMETRY_INPUTS)], 1))
    torch.testing.assert_close(padded[:, :3], alone)


def test_a_ranked_answer_is_the_best_candidate_over_the_threshold(ranking):
    world = SynthRef.for_model(ranking.config)
    prompts = world.split("val", "text", 4) + world.split("val", "no_target", 2)
    seen = set()
    for prompt in prompts:
        candidates = ranking.location_candidates(prompt.image, prompt.references)
        result = ranking.segment(prompt.image, prompt.references)
        assert len(candidates), "every answer of these prompts has an <obj>: it has peaks"
        scores = ranking._candidate_probabilities(
            [peak_rank_samples(ranking, [prompt])[0]], None, False, ranking.text_rank_head)
        if scores.max() > 0.3:
            assert result.found and np.array_equal(result.masks[0], candidates[scores.argmax()])
            seen.add("answered")
        else:
            assert not result.found and "<rejected>" in result.text
            seen.add("rejected")
    assert seen  # an untrained head's scores decide either way; each branch is checked where it happens


def test_ranking_leaves_other_prompts_and_batches_agree(ranking):
    world = SynthRef.for_model(ranking.config)
    prompt = world.split("val", "text", 1)[0]
    box = Box(10, 10, 60, 60)
    ranking.set_rank_text_answers(None)
    try:
        plain = ranking.segment(prompt.image, box)
    finally:
        ranking.set_rank_text_answers(0.3)
    assert np.array_equal(ranking.segment(prompt.image, box).masks, plain.masks)
    alone = ranking.segment(prompt.image, prompt.references)
    many = ranking.segment_many(prompt.image, [prompt.references, box])
    batched = ranking.segment_batch([prompt.image, prompt.image], [prompt.references, box])
    for result in (many[0], batched[0]):
        assert result.text == alone.text and np.array_equal(result.masks, alone.masks)
    assert np.array_equal(many[1].masks, plain.masks)


def test_candidates_drawn_in_a_batch_are_those_drawn_one_at_a_time(ranking):
    world = SynthRef.for_model(ranking.config)
    prompts = world.split("val", "text", 3) + world.split("val", "no_target", 2)
    batched = ranking.location_candidates_batch([p.image for p in prompts], [p.references for p in prompts])
    assert len(batched) == len(prompts)
    for prompt, drawn in zip(prompts, batched):
        alone = ranking.location_candidates(prompt.image, prompt.references)
        assert drawn.dtype == bool and drawn.shape == alone.shape and np.array_equal(drawn, alone)
    assert any(len(drawn) > 1 for drawn in batched)  # more than one peak somewhere: the order is compared too
    with pytest.raises(ValueError, match="same length"):
        ranking.location_candidates_batch([prompts[0].image], [])


def test_peak_samples_are_labelled_by_their_target(ranking):
    world = SynthRef.for_model(ranking.config)
    text, absent = world.split("val", "text", 3), world.split("val", "no_target", 2)
    samples = peak_rank_samples(ranking, text + absent)
    assert len(samples) == 5
    for sample, prompt in zip(samples, text + absent):
        target = prompt.masks.any(0) if len(prompt.masks) else np.zeros(prompt.image.shape[:2], bool)
        ious = [(c & target).sum() / (c | target).sum() for c in sample.candidates]
        assert sample.selected.tolist() == [bool(i >= 0.5) for i in ious]
    assert not any(s.selected.any() for s in samples[3:])  # nothing is the target of a no-target prompt
    assert any(s.selected.any() for s in samples[:3])


def test_the_rank_fit_saves_a_model_that_ranks(tmp_path):
    out = tmp_path / "ranked"
    assert main(["--rank-head", "--peak-samples", "6", "--peak-val", "4", "--text-samples", "6", "--text-val", "4",
                 "--epochs", "2", "--batch-size", "4", "--rank-threshold", "0.6", "--workers", "1",
                 "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "rank_fit.json").read_text())
    assert report["fitted"] == "text_rank_head" and report["peak_val_prompts"] == 4 and len(report["history"]) == 2
    loaded = AnyRef.from_pretrained(out)
    assert loaded.config.text_rank_head and loaded.config.rank_text_answers == 0.6
    assert isinstance(loaded.text_rank_head, RelationGroupHead)
    with pytest.raises(ValueError, match="--peak-samples"):
        main(["--rank-head", "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="--rank-head"):
        main(["--rank-threshold", "0.5", "--out", str(tmp_path / "x")])
