"""Few-shot readers on tiny PASCAL-5i (VOC folders + HSNet fold list) and COCO-20i (COCO2014 folders + HSNet fold
pickle) datasets, HSNet's episode sampling, K-shot voting, and the few-shot runner end to end."""
import itertools
import pickle

import numpy as np
import pytest
from PIL import Image

from anyref.references import ExampleImage
from eval.datasets import FewShotReader, fold_classes
from eval.datasets.fewshot import pascal_episodes
from eval.metrics import fewshot_scores
from eval.runners import run_fewshot, vote_masks

# PASCAL fold 0 = classes 0..4 (file labels 1..5); image name -> (size, class labels drawn in it)
PASCAL_IMAGES = {"2007_000032": ((40, 48), [1]), "2007_000039": ((36, 52), [1, 3]), "2007_000063": ((44, 40), [3]),
                 "2008_000123": ((40, 40), [1]), "2008_000200": ((32, 48), [3, 5])}
PASCAL_LIST = ["2007_000032__1", "2007_000039__1", "2008_000123__1", "2007_000039__3", "2007_000063__3",
               "2008_000200__3"]


def labels_for(name: str, size, classes) -> np.ndarray:
    """Class c fills a band of rows; a 255 boundary line around each band, as VOC's masks have."""
    labels = np.zeros(size, dtype=np.uint8)
    seed = sum(map(ord, name))
    for i, c in enumerate(classes):
        top = 2 + i * 12 + seed % 3
        labels[top: top + 9, 3 + i: 3 + i + 20] = c
        labels[top + 9, 3 + i: 3 + i + 20] = 255
    return labels


def write_pascal(root):
    voc = root / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClassAug").mkdir()
    for i, (name, (size, classes)) in enumerate(PASCAL_IMAGES.items()):
        pixels = (np.random.default_rng(i).random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(voc / "JPEGImages" / f"{name}.jpg")
        Image.fromarray(labels_for(name, size, classes)).save(voc / "SegmentationClassAug" / f"{name}.png")
    folds = root / "splits" / "pascal" / "val"
    folds.mkdir(parents=True)
    (folds / "fold0.txt").write_text("\n".join(PASCAL_LIST) + "\n")
    return root


def write_coco(root):
    """COCO2014/val2014/*.jpg, COCO2014/annotations/val2014/*.png (class c -> c + 1), splits/coco/val/fold1.pkl."""
    base = root / "COCO2014"
    (base / "val2014").mkdir(parents=True)
    (base / "annotations" / "val2014").mkdir(parents=True)
    classes = fold_classes("coco", 1)
    names = [f"val2014/COCO_val2014_{i:012d}.jpg" for i in range(1, 5)]
    for i, name in enumerate(names):
        pixels = (np.random.default_rng(i).random((30, 36, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(base / name)
        labels = np.zeros((30, 36), dtype=np.uint8)
        labels[5 + i: 20, 4: 30 - i] = classes[i] + 1
        Image.fromarray(labels).save(base / "annotations" / name.replace(".jpg", ".png"))
    classwise = {c: [names[j % 4] for j in range(k % 4, k % 4 + 3)] for k, c in enumerate(classes)}
    folds = root / "splits" / "coco" / "val"
    folds.mkdir(parents=True)
    with open(folds / "fold1.pkl", "wb") as handle:
        pickle.dump(classwise, handle)
    return root, classwise


@pytest.fixture
def pascal_root(tmp_path):
    return write_pascal(tmp_path / "Datasets_HSN")


def test_fold_classes():
    assert fold_classes("pascal", 0) == [0, 1, 2, 3, 4] and fold_classes("pascal", 3) == [15, 16, 17, 18, 19]
    assert fold_classes("coco", 1) == [1 + 4 * v for v in range(20)]
    with pytest.raises(ValueError, match="fold"):
        fold_classes("pascal", 4)


def test_pascal_episodes_follow_hsnet_sampling():
    lines = [(line.split("__")[0], int(line.split("__")[1]) - 1) for line in PASCAL_LIST]
    episodes = pascal_episodes(lines, shot=2, episodes=20, seed=0)
    # HSNet's test loader, literally: the global numpy generator seeded with 0, queries in list order (wrapping),
    # supports drawn with choice(..., 1, replace=False) until they differ from the query
    by_class = {}
    for name, c in lines:
        by_class.setdefault(c, []).append(name)
    np.random.seed(0)
    for i, episode in enumerate(episodes):
        query, class_id = lines[i % len(lines)]
        supports = []
        while True:
            support = np.random.choice(by_class[class_id], 1, replace=False)[0]
            if support != query:
                supports.append(support)
            if len(supports) == 2:
                break
        assert (episode.query, episode.class_id, list(episode.supports)) == (query, class_id, supports)
    # a class with one image: no support can differ from the query
    with pytest.raises(ValueError, match="no other image"):
        pascal_episodes(lines + [("2008_000200", 4)], shot=1, episodes=len(lines) + 1, seed=0)


def test_pascal_reader_masks_ignore_and_supports(pascal_root):
    reader = FewShotReader(pascal_root, "pascal", fold=0, shot=2, episodes=6, seed=0)
    assert len(reader) == 6 and reader.dataset == "pascal-5i"
    samples = list(reader)
    first = samples[0]
    assert first.meta["query"] == "2007_000032" and first.meta["class_id"] == 0
    assert first.meta["class_name"] == "aeroplane" and first.meta["episode"] == 0
    labels = labels_for("2007_000032", (40, 48), [1])
    np.testing.assert_array_equal(first.masks[0], labels == 1)
    np.testing.assert_array_equal(first.meta["ignore"], labels == 255)
    assert len(first.references) == 2 and all(isinstance(r, ExampleImage) for r in first.references)
    for ref, name in zip(first.references, first.meta["supports"]):
        size, classes = PASCAL_IMAGES[name]
        assert name != "2007_000032" and ref.image.shape == (*size, 3)
        np.testing.assert_array_equal(ref.mask, labels_for(name, size, classes) == 1)
    # episode 3 queries class 2 ("bird", 3 in the file) on an image that also shows class 0
    fourth = samples[3]
    assert fourth.meta["class_id"] == 2 and fourth.meta["query"] == "2007_000039"
    np.testing.assert_array_equal(fourth.masks[0], labels_for("2007_000039", (36, 52), [1, 3]) == 3)
    plain = next(iter(FewShotReader(pascal_root, "pascal", 0, 1, 1, mask_crop=False)))
    assert plain.references[0].mask is None


def test_pascal_reader_errors(pascal_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="fold1.txt"):
        FewShotReader(pascal_root, "pascal", fold=1)
    with pytest.raises(FileNotFoundError, match="split lists"):
        FewShotReader(pascal_root / "VOC2012", "pascal", fold=0)
    with pytest.raises(ValueError, match="unknown split 'test'.*available: val"):
        FewShotReader(pascal_root, "pascal", fold=0, split="test")
    with pytest.raises(ValueError, match="outside fold"):
        (pascal_root / "splits" / "pascal" / "val" / "fold0.txt").write_text("2007_000032__7\n")
        FewShotReader(pascal_root, "pascal", fold=0)


def test_coco_fold_pickle_is_read_only_from_a_named_splits_folder(tmp_path):
    root, _ = write_coco(tmp_path / "hsn")  # splits/coco/val/fold1.pkl sits below --data
    with pytest.raises(ValueError, match="pass --splits"):  # a pickle runs code: never one found by searching
        FewShotReader(root, "coco", fold=1)
    assert len(FewShotReader(root, "coco", fold=1, episodes=3, splits=root / "splits")) == 3


def test_coco_reader_from_the_fold_pickle(tmp_path):
    root, classwise = write_coco(tmp_path / "hsn")
    reader = FewShotReader(root, "coco", fold=1, shot=1, episodes=4, seed=0, splits=root / "splits")
    rng = np.random.RandomState(0)  # HSNet: class, then query, then supports, from one generator
    for sample in reader:
        class_id = int(rng.choice(fold_classes("coco", 1), 1, replace=False)[0])
        query = rng.choice(classwise[class_id], 1, replace=False)[0]
        assert (sample.meta["class_id"], sample.meta["query"]) == (class_id, query)
        labels = np.asarray(Image.open(root / "COCO2014" / "annotations" / query.replace(".jpg", ".png")))
        np.testing.assert_array_equal(sample.masks[0], labels == class_id + 1)
        assert not sample.meta["ignore"].any()  # HSNet's COCO loader has no ignore region
        while True:
            support = rng.choice(classwise[class_id], 1, replace=False)[0]
            if support != query:
                break
        assert sample.meta["supports"] == [support]


def test_vote_masks_is_hsnet_aggregation():
    a = np.array([[1, 1, 1, 0]], dtype=bool)
    b = np.array([[1, 1, 0, 0]], dtype=bool)
    c = np.array([[1, 0, 0, 0]], dtype=bool)
    # votes 3, 2, 1, 0; max vote 3: kept where votes / 3 >= 0.5
    np.testing.assert_array_equal(vote_masks([a, b, c]), [[True, True, False, False]])
    # votes 2, 2, 1, 0 of 3 shots; the max vote (2), not the shot count, normalises: 1 / 2 >= 0.5 is kept
    np.testing.assert_array_equal(vote_masks([a, a, np.zeros_like(a)]) | vote_masks([b, a, c]),
                                  [[True, True, True, False]])
    np.testing.assert_array_equal(vote_masks([np.zeros_like(a)] * 2), np.zeros_like(a))
    np.testing.assert_array_equal(vote_masks([b]), b)


def test_run_fewshot_end_to_end(tiny_model, pascal_root, tmp_path):
    reader = FewShotReader(pascal_root, "pascal", fold=0, shot=2)
    out = run_fewshot(tiny_model, reader, limit=3, overlays=tmp_path / "png", progress=False)
    assert out.counts["episodes"] == 3 and out.counts["segment_calls"] == 6
    assert out.settings == {"benchmark": "pascal", "fold": 0, "shot": 2, "mask_crop": True, "episodes": 1000,
                            "seed": 0, "fold_classes": [0, 1, 2, 3, 4]}  # the draw, to tell HSNet's from others
    assert set(out.metrics) == {"miou", "fbiou"}
    assert len(list((tmp_path / "png").glob("*.png"))) == 3
    if out.counts["no_mask"] == 6:  # the untrained model answers without masks: an all-background prediction
        samples = list(itertools.islice(reader, 3))
        gts = []
        for s in samples:
            gt = s.masks[0].astype(np.uint8)
            gt[s.meta["ignore"]] = 255
            gts.append(gt)
        expected = fewshot_scores([s.meta["class_id"] for s in samples], [np.zeros_like(g, bool) for g in gts], gts,
                                  fold_classes=[0, 1, 2, 3, 4])
        assert out.metrics == pytest.approx(expected)
