"""Unit tests for eval.metrics and eval.caption_metrics against hand-computed cases (shared/reference/metrics.md).

Each expected value is worked out in the comments next to it; masks are tiny so the arithmetic can be checked by eye.
"""
import math
import shutil

import numpy as np
import pytest
import torch

from eval.bench_metrics import avs_fscore_loop
from eval.metrics import (
    AvsAccumulator,
    FewShotAccumulator,
    GresAccumulator,
    RefSegAccumulator,
    _thresholds_reached,
    avs_fscore,
    avs_miou,
    ciou,
    fewshot_scores,
    giou,
    gres_scores,
)


def m(rows):
    """A bool mask from nested 0/1 lists."""
    return np.array(rows, dtype=bool)


def logits_of(probs):
    """Logits whose float32 sigmoid is (close to) the given probabilities: 1 x K video rows."""
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.log(p / (1 - p)).to(torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# LISA gIoU / cIoU
# ---------------------------------------------------------------------------------------------------------------


def test_lisa_hand_computed():
    # Mask A: pred {(0,0),(0,1)}, gt {(0,0),(1,0)} -> I = 1, U = 3, iou = 1 / (3 + 1e-5).
    # Mask B: pred all 4, gt top row           -> I = 2, U = 4, iou = 2 / (4 + 1e-5).
    preds = [m([[1, 1, 0], [0, 0, 0]]), m([[1, 1], [1, 1]])]
    gts = [m([[1, 0, 0], [1, 0, 0]]), m([[1, 1], [0, 0]])]
    # cIoU = (1 + 2) / (3 + 4 + 1e-10); gIoU = (sum of ious) / (2 + 1e-5).
    assert ciou(preds, gts) == pytest.approx(3 / 7, rel=1e-6)
    assert giou(preds, gts) == pytest.approx((1 / (3 + 1e-5) + 2 / (4 + 1e-5)) / (2 + 1e-5), rel=1e-6)


def test_lisa_epsilons():
    # One pixel, perfectly predicted: iou = 1 / (1 + 1e-5), gIoU divides again by (1 + 1e-5) -> 0.99998, not 1.
    one = [m([[1, 0]])]
    assert giou(one, one) == pytest.approx(1 / (1 + 1e-5) ** 2, abs=2e-7)
    assert giou(one, one) < 1 - 1.5e-5
    # cIoU's 1e-10 vanishes next to a union of 1 in float32.
    assert ciou(one, one) == 1.0


def test_lisa_empty_on_empty_scores_one():
    empty = [m([[0, 0], [0, 0]])]
    # U = 0: iou = 0 / (0 + 1e-5) + 1.0 = 1; gIoU = 1 / (1 + 1e-5).
    assert giou(empty, empty) == pytest.approx(1 / (1 + 1e-5), abs=1e-7)
    # cIoU = 0 / (0 + 1e-10) = 0: no NaN, no ZeroDivisionError.
    assert ciou(empty, empty) == 0.0
    # An empty GT with a non-empty prediction: I = 0, U = 1 -> iou 0. gIoU over both = 1 / (2 + 1e-5).
    preds = [m([[0, 0]]), m([[1, 0]])]
    gts = [m([[0, 0]]), m([[0, 0]])]
    assert giou(preds, gts) == pytest.approx(1 / (2 + 1e-5), abs=1e-7)


def test_lisa_accumulator_matches_functions_and_accepts_torch():
    rng = np.random.default_rng(0)
    preds = [rng.random((5, 7)) > 0.5 for _ in range(4)]
    gts = [rng.random((5, 7)) > 0.5 for _ in range(4)]
    acc = RefSegAccumulator()
    for pred, gt in zip(preds, gts):
        acc.add(torch.from_numpy(pred), torch.from_numpy(gt).to(torch.uint8))
    assert acc.result() == {"giou": giou(preds, gts), "ciou": ciou(preds, gts)}


# ---------------------------------------------------------------------------------------------------------------
# ReLA (gRefCOCO)
# ---------------------------------------------------------------------------------------------------------------


def test_gres_four_cases():
    preds = [
        m([[1, 0], [0, 0]]),  # TP: GT empty, flag predicted; the mask is ignored -> iou 1, adds nothing
        m([[1, 1], [1, 0]]),  # FN: GT empty, no flag -> iou 0, U += predicted area 3
        m([[0, 1], [1, 0]]),  # FP: GT top row, flag predicted -> I = 0 (not 1), U = 3, iou 0
        m([[1, 1], [0, 0]]),  # TN: GT all 4 -> I = 2, U = 4, iou 0.5
    ]
    gts = [m([[0, 0], [0, 0]]), m([[0, 0], [0, 0]]), m([[1, 1], [0, 0]]), m([[1, 1], [1, 1]])]
    flags = [True, False, True, False]
    scores = gres_scores(preds, gts, flags)
    # gIoU = (1 + 0 + 0 + 0.5) / 4; cIoU = (0 + 0 + 0 + 2) / (0 + 3 + 3 + 4);
    # N-acc = TP / (TP + FN) = 1/2; T-acc = TN / (TN + FP) = 1/2; Pr@t over the two targeted samples (ious 0, 0.5)
    assert scores == pytest.approx({"giou": 0.375, "ciou": 0.2, "n_acc": 0.5, "t_acc": 0.5,
                                    "pr@0.7": 0.0, "pr@0.8": 0.0, "pr@0.9": 0.0})
    exact = gres_scores([m([[1, 1], [0, 0]]), m([[1, 1], [1, 0]]), m([[0, 0], [0, 0]])],
                        [m([[1, 1], [0, 0]]), m([[1, 1], [1, 1]]), m([[0, 0], [0, 0]])], [False, False, True])
    # targeted ious 1 and 0.75; the no-target sample is not counted in Pr@t
    assert (exact["pr@0.7"], exact["pr@0.8"], exact["pr@0.9"]) == (1.0, 0.5, 0.5)


def test_gres_flag_is_not_inferred_from_an_empty_mask():
    # Empty prediction on an empty GT but no flag: still FN (iou 0); cIoU 0/0 -> 0; T-acc undefined -> 0.
    scores = gres_scores([m([[0, 0]])], [m([[0, 0]])], [False])
    assert scores == {"giou": 0.0, "ciou": 0.0, "n_acc": 0.0, "t_acc": 0.0, "pr@0.7": 0.0, "pr@0.8": 0.0, "pr@0.9": 0.0}


def test_gres_zero_union_and_undefined_accuracies():
    # Annotated as having a target but both masks empty: TN with U = 0 -> iou 0 (not 1 as in LISA).
    scores = gres_scores([m([[0, 0]])], [m([[0, 0]])], [False], gt_no_target=[False])
    assert scores == {"giou": 0.0, "ciou": 0.0, "n_acc": 0.0, "t_acc": 1.0, "pr@0.7": 0.0, "pr@0.8": 0.0, "pr@0.9": 0.0}
    # Only no-target samples, all detected: gIoU 1, no pixels -> cIoU 0, T-acc undefined -> 0.
    acc = GresAccumulator()
    for _ in range(2):
        acc.add(m([[0, 1]]), m([[0, 0]]), pred_no_target=True)
    assert acc.result() == {"giou": 1.0, "ciou": 0.0, "n_acc": 1.0, "t_acc": 0.0, "pr@0.7": 0.0, "pr@0.8": 0.0,
                            "pr@0.9": 0.0}
    assert acc.cases == {"tp": 2, "fn": 0, "fp": 0, "tn": 0}


# ---------------------------------------------------------------------------------------------------------------
# AVSBench mIoU and F-score
# ---------------------------------------------------------------------------------------------------------------


def test_avs_miou_hand_computed():
    logits = torch.tensor([[[5.0, 5.0], [-5.0, -5.0]],    # pred top row
                           [[5.0, -5.0], [-5.0, -5.0]]])  # pred one pixel
    gt = torch.tensor([[[1, 0], [0, 0]],                  # I = 1, U = 2 -> 0.5
                       [[0, 0], [0, 0]]])                 # empty GT: I = 3 true negatives, U = H*W = 4 -> 0.75
    # (1 / (2 + 1e-7) + 3 / (4 + 1e-7)) / 2 = 0.625
    assert avs_miou(logits, gt) == pytest.approx(0.625, abs=1e-6)
    # Empty prediction on an empty GT: 4 / (4 + 1e-7) = 1.
    assert avs_miou(torch.full((1, 2, 2), -5.0), torch.zeros(1, 2, 2)) == pytest.approx(1.0, abs=1e-6)


def test_avs_miou_thresholds_the_float32_sigmoid():
    # sigmoid(1e-9) rounds to exactly 0.5 in float32, which is not > 0.5: that pixel is background, so
    # I = 1, U = 2 -> 0.5 (thresholding logits > 0 would give 1.0).
    assert torch.sigmoid(torch.tensor(1e-9)) == 0.5
    assert avs_miou(torch.tensor([[[1e-9, 1.0]]]), torch.tensor([[[1, 1]]])) == pytest.approx(0.5, abs=1e-6)


# Frame 0: gt [1, 1, 0, 0], p [0.9, 0.4, 0.6, 0.1]. Thresholds t_i = i / 254; F = 1.3 P R / (0.3 P + R):
#   t <= 0.1       : 4 predicted, tp 2 -> P 1/2, R 1   -> 0.65 / 1.15 = 0.5652
#   0.1 < t <= 0.4 : 3 predicted, tp 2 -> P 2/3, R 1   -> 0.8667 / 1.2 = 0.7222
#   0.4 < t <= 0.6 : 2 predicted, tp 1 -> P 1/2, R 1/2 -> 0.325 / 0.65 = 0.5
#   0.6 < t <= 0.9 : 1 predicted, tp 1 -> P 1,   R 1/2 -> 0.65 / 0.8 = 0.8125   <- max
#   t > 0.9        : nothing predicted, tp 0 -> 0/0 = NaN -> 0
FRAME0 = ([0.9, 0.4, 0.6, 0.1], [1, 1, 0, 0])
# Frame 2: gt [1, 0, 0, 0], p [0.95, 0.05, 0.05, 0.05]:
#   t <= 0.05 -> P 1/4, R 1 -> 0.325 / 1.075 = 0.3023;  0.05 < t <= 0.95 -> F = 1;  t > 0.95 -> 0
FRAME2 = ([0.95, 0.05, 0.05, 0.05], [1, 0, 0, 0])


def video(*frames):
    """N x 1 x K logits and gt from (probabilities, gt) rows."""
    return (torch.stack([logits_of(p) for p, _ in frames]).unsqueeze(1),
            torch.tensor([g for _, g in frames]).unsqueeze(1))


def test_avs_fscore_hand_computed():
    assert avs_fscore(*video(FRAME0)) == pytest.approx(0.8125, abs=1e-6)
    # Averaged curve of frames 0 and 2: best on 0.6 < t <= 0.9, (0.8125 + 1) / 2 = 0.90625.
    assert avs_fscore(*video(FRAME0, FRAME2)) == pytest.approx(0.90625, abs=1e-6)


def test_avs_fscore_skips_empty_gt_frames():
    # The empty-GT frame is left out of the average (dividing by 3 would give 0.6042).
    empty = ([0.9, 0.9, 0.1, 0.1], [0, 0, 0, 0])
    assert avs_fscore(*video(FRAME0, empty, FRAME2)) == pytest.approx(0.90625, abs=1e-6)


def test_avs_fscore_all_empty_video_scores_zero_and_counts():
    empty_video = video(([0.9, 0.1], [0, 0]), ([0.2, 0.7], [0, 0]))
    assert avs_fscore(*empty_video) == 0.0
    acc = AvsAccumulator()
    acc.add(*video(FRAME0))
    acc.add(*empty_video)
    # Dataset F = mean over both videos = (0.8125 + 0) / 2.
    assert acc.result()["fscore"] == pytest.approx(0.40625, abs=1e-6)


def test_avs_fscore_nan_becomes_zero():
    # gt [1, 0], p [0, 1]: t = 0 predicts both, tp 1 -> P 1/2, R 1 -> 0.5652; for every t > 0 only the
    # wrong pixel is predicted, tp 0 -> 0/0. Unless NaN -> 0, the max would be NaN.
    logits, gt = torch.tensor([[[-math.inf, math.inf]]]), torch.tensor([[[1, 0]]])
    assert avs_fscore(logits, gt) == pytest.approx(0.65 / 1.15, abs=1e-6)


def test_avs_fscore_last_threshold_is_exactly_one():
    # p = [1.0, 0.99999988] (logits 20 and 16 in float32), gt [1, 0]. Every threshold below 1 keeps both pixels
    # (F = 0.5652); only the last, exactly 1.0, separates them (F = 1).
    logits, gt = torch.tensor([[[20.0, 16.0]]]), torch.tensor([[[1, 0]]])
    assert torch.sigmoid(logits)[0, 0, 0] == 1.0 and torch.sigmoid(logits)[0, 0, 1] < 1.0
    assert avs_fscore(logits, gt) == 1.0


def test_thresholds_reached_matches_bucketize_at_the_grid_points():
    for t in (1, 2, 255, 1000):
        thresholds = torch.linspace(0, 1 - 1e-10, t, dtype=torch.float32)
        # The grid values themselves and their float32 neighbours are where rounding could go wrong.
        probs = torch.cat([thresholds,
                           torch.nextafter(thresholds, torch.tensor(2.0)).clamp(max=1),
                           torch.nextafter(thresholds, torch.tensor(-1.0)).clamp(min=0),
                           torch.rand(1000, generator=torch.Generator().manual_seed(t))])
        expected = torch.bucketize(probs, thresholds, right=True)
        assert torch.equal(_thresholds_reached(probs, thresholds).long(), expected)


@pytest.mark.parametrize("seed", range(6))
def test_avs_fscore_vectorised_equals_loop_reference(seed):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(5, 24, 32, generator=gen) * (1 + 6 * seed)  # large scales saturate p at 0 and 1
    gt = (torch.rand(5, 24, 32, generator=gen) < 0.1 + 0.1 * seed).to(torch.int64)
    gt[seed % 5] = 0  # one empty-GT frame
    for beta2, num in ((0.3, 255), (1.0, 17)):
        assert avs_fscore(logits, gt, beta2, num) == pytest.approx(avs_fscore_loop(logits, gt, beta2, num),
                                                                   abs=1e-6)


def test_avs_numpy_and_torch_agree():
    logits, gt = video(FRAME0, FRAME2)
    assert avs_fscore(logits.numpy().astype(np.float64), gt.numpy()) == avs_fscore(logits, gt)
    assert avs_miou(logits.numpy(), gt.numpy().astype(bool)) == avs_miou(logits, gt)


# ---------------------------------------------------------------------------------------------------------------
# HSNet few-shot mIoU / FB-IoU
# ---------------------------------------------------------------------------------------------------------------

# ep1 (class 3): gt [[1,1],[0,0]], pred [[1,0],[0,0]]  fg I 1, U 2;  bg I 2, U 3
# ep2 (class 3): gt [[1,255],[0,0]], pred all 1; (0,1) ignored, 3 pixels left: pred [1,1,1], gt [1,0,0]
#                                                      fg I 1, U 3;  bg I 0, U 2
# ep3 (class 7): gt [[0,0],[0,1]], pred all 0          fg I 0, U 1;  bg I 3, U 4
EPISODES = (
    [3, 3, 7],
    [m([[1, 0], [0, 0]]), m([[1, 1], [1, 1]]), m([[0, 0], [0, 0]])],
    [np.array([[1, 1], [0, 0]]), np.array([[1, 255], [0, 0]]), np.array([[0, 0], [0, 1]])],
)


def test_fewshot_hand_computed():
    scores = fewshot_scores(*EPISODES)
    # Per class: class 3 fg = (1 + 1) / (2 + 3) = 0.4 (not the mean of episode IoUs, 0.4167); class 7 fg = 0.
    # mIoU = (0.4 + 0) / 2 = 0.2.
    # FB-IoU: bg = (2 + 0 + 3) / (3 + 2 + 4) = 5/9, fg = (1 + 1 + 0) / (2 + 3 + 1) = 1/3 -> mean 4/9.
    assert scores == pytest.approx({"miou": 0.2, "fbiou": 4 / 9}, rel=1e-6)


def test_fewshot_ignore_index():
    # Flipping the prediction on the ignored pixel changes nothing.
    classes, preds, gts = EPISODES
    flipped = [p.copy() for p in preds]
    flipped[1][0, 1] = False
    assert fewshot_scores(classes, flipped, gts) == fewshot_scores(classes, preds, gts)
    # With another ignore label, 255 is an invalid value.
    with pytest.raises(ValueError, match="ignore_index"):
        fewshot_scores(classes, preds, gts, ignore_index=254)


def test_fewshot_fold_classes():
    # Class 11 is in the fold but never seen: it scores 0/max(0, 1) = 0 and adds nothing to FB-IoU.
    scores = fewshot_scores(*EPISODES, fold_classes=[3, 7, 11])
    assert scores == pytest.approx({"miou": 0.4 / 3, "fbiou": 4 / 9}, rel=1e-6)
    with pytest.raises(ValueError, match="not in fold_classes"):
        fewshot_scores(*EPISODES, fold_classes=[3])


def test_fewshot_accumulator_streams():
    acc = FewShotAccumulator()
    for class_id, pred, gt in zip(*EPISODES):
        acc.add(class_id, torch.from_numpy(pred), torch.from_numpy(gt))
    assert acc.result() == fewshot_scores(*EPISODES)


# ---------------------------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: ciou([], []), "no masks"),
    (lambda: giou([m([[1, 0]])], []), "1 predictions but 0 ground truths"),
    (lambda: ciou([m([[1, 0]])], [m([[1, 0, 0]])]), "shapes differ"),
    (lambda: ciou([np.array([[0.3, -2.0]])], [m([[1, 0]])]), "binary"),
    (lambda: giou([m([1, 0])], [m([1, 0])]), r"\[H, W\]"),
    (lambda: gres_scores([m([[1]])], [m([[1]])], []), "no_target"),
    (lambda: gres_scores([], [], []), "no samples"),
    (lambda: avs_miou(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4)), "empty"),
    (lambda: avs_miou(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5)), "shapes differ"),
    (lambda: avs_fscore(torch.zeros(4, 4), torch.zeros(4, 4)), r"\[N, H, W\]"),
    (lambda: avs_fscore(torch.full((1, 2, 2), math.nan), torch.ones(1, 2, 2)), "NaN"),
    (lambda: avs_fscore(torch.zeros(1, 2, 2), torch.full((1, 2, 2), 2)), "binary"),
    (lambda: fewshot_scores([], [], []), "no episodes"),
    (lambda: fewshot_scores([1], [m([[1]])], []), "0 ground truths"),
    (lambda: fewshot_scores([1, 2], [m([[1]])], [m([[1]])]), "class ids"),
])
def test_invalid_inputs_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ---------------------------------------------------------------------------------------------------------------
# Captions (pycocoevalcap; Java)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def caption_metrics():
    """eval.caption_metrics, or a skip where pycocoevalcap is missing (it is in the `eval` and `test` extras)."""
    pytest.importorskip("pycocoevalcap", reason="pycocoevalcap is not installed")
    import eval.caption_metrics

    return eval.caption_metrics


REFERENCES = {
    1: ["A man riding a horse.", "a person on a horse"],
    2: ["the red car parked on the street", "a red car by the road"],
    3: ["two dogs playing in the grass", "dogs running on a lawn"],
}


@pytest.mark.slow  # METEOR's jar takes ~15 s to load its paraphrase tables
def test_caption_scores_rank_exact_above_wrong(caption_metrics):
    exact = caption_metrics.caption_scores({k: refs[0] for k, refs in REFERENCES.items()}, REFERENCES)
    wrong = caption_metrics.caption_scores({1: "a bowl of soup", 2: "two cats asleep", 3: "an empty kitchen"},
                                           REFERENCES)
    for scores in (exact, wrong):
        assert set(scores) == {"cider", "meteor"} and all(math.isfinite(v) for v in scores.values())
        assert 0.0 <= scores["meteor"] <= 1.0
    assert exact["cider"] > wrong["cider"] and exact["meteor"] > wrong["meteor"]


needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="pycocoevalcap's tokenizer and METEOR need java")


class _NoMeteor:
    """METEOR's stand-in where only the tokenizer and CIDEr are under test (the jar takes ~15 s to start)."""

    def compute_score(self, gts, res):
        return 0.0, []


@needs_java
def test_caption_scores_keep_each_caption_on_its_id(caption_metrics, monkeypatch):
    # The PTB tokenizer reads one caption per line and replaces only "\n": any other line break inside a caption
    # moved every later caption onto the next id, silently.
    monkeypatch.setattr(caption_metrics, "Meteor", _NoMeteor)
    plain = {1: "a man riding a horse", 2: "a red car by the road", 3: "dogs running on a lawn"}
    broken = {1: "a man\rriding a horse", 2: "a red car\u2028by the road", 3: "dogs running\x0con a lawn"}
    references = {k: [r.replace("the red", "the\r\nred") for r in refs] for k, refs in REFERENCES.items()}
    expected = caption_metrics.caption_scores(plain, REFERENCES)["cider"]
    assert expected > 0
    assert caption_metrics.caption_scores(broken, references)["cider"] == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow  # METEOR's jar takes ~15 s to load its paraphrase tables
@needs_java
def test_caption_scores_see_captions_after_ptb_normalisation(caption_metrics):
    # Pinned: case and punctuation are the tokenizer's to drop (lower-cased, punctuation tokens removed), so a
    # caption scores as its normalised form on both metrics; scoring the raw text would tell them apart.
    raw = caption_metrics.caption_scores({1: "A man, riding.", 2: "The RED car!", 3: "two dogs"}, REFERENCES)
    normalised = caption_metrics.caption_scores({1: "a man riding", 2: "the red car", 3: "two dogs"}, REFERENCES)
    assert raw["cider"] > 0 and raw["meteor"] > 0
    assert raw == pytest.approx(normalised, abs=1e-12)


def test_caption_scores_checks_inputs_and_java(caption_metrics, monkeypatch):
    with pytest.raises(ValueError, match="same ids"):
        caption_metrics.caption_scores({1: "a horse"}, {2: ["a horse"]})
    with pytest.raises(ValueError, match="non-empty list of str"):
        caption_metrics.caption_scores({1: "a horse"}, {1: "a horse"})
    monkeypatch.setattr(caption_metrics.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="java"):
        caption_metrics.caption_scores({1: "a horse"}, {1: ["a horse"]})
