"""AVSBench readers on tiny S4 and MS3 trees in the official layout and in the redistributed AVS1 layout (PNG
frames, 0/255 mask PNGs, wavs written by soundfile, metadata CSVs), and the AVS runner end to end."""
import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from eval.datasets import AvsReader
from eval.metrics import avs_fscore, avs_miou
from eval.runners import NO_MASK_LOGIT, run_avs

H, W = 32, 40
RATE = 16000


def frame(seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((H, W, 3)) * 255).astype(np.uint8)


def gt_mask(seed: int, k: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    if (seed + k) % 4:  # every fourth frame has an empty mask
        mask[2 * k: 2 * k + 10, seed % 7: seed % 7 + 12] = True
    return mask


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _wav(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, np.random.default_rng(seed).standard_normal(RATE).astype(np.float32) * 0.1, RATE)


S4_VIDEOS = [("vidA", "dog_barking", "test"), ("vidB", "baby_laughter", "test"), ("vidC", "dog_barking", "train")]
MS3_VIDEOS = [("msA", "test"), ("msB", "test"), ("msC", "val")]


def write_s4(base, csv_path):
    """base/{visual_frames,gt_masks,audio_wav}/{split}/{category}/{name}/... and the metadata CSV."""
    rows = ["name,start_time,category,split"]
    for seed, (name, category, split) in enumerate(S4_VIDEOS):
        rows.append(f"{name},0,{category},{split}")
        _wav(base / "audio_wav" / split / category / f"{name}.wav", seed)
        for k in range(1, 6):
            _png(base / "visual_frames" / split / category / name / f"{name}_{k}.png", frame(10 * seed + k))
            if split != "train" or k == 1:  # S4 train: only the first frame is annotated
                mask = gt_mask(seed, k).astype(np.uint8) * 255
                _png(base / "gt_masks" / split / category / name / f"{name}_{k}.png", mask)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.write_text("\n".join(rows) + "\n")


def write_ms3(base, csv_path):
    rows = ["name,a_obj,split"]
    for seed, (name, split) in enumerate(MS3_VIDEOS):
        rows.append(f"{name},guitar;voice,{split}")
        _wav(base / "audio_wav" / split / f"{name}.wav", seed)
        for k in range(1, 6):
            _png(base / "visual_frames" / name / f"{name}.mp4_{k}.png", frame(10 * seed + k))
            _png(base / "gt_masks" / split / name / f"{name}_{k}.png", gt_mask(seed, k).astype(np.uint8) * 255)
    csv_path.write_text("\n".join(rows) + "\n")


@pytest.fixture
def official(tmp_path):
    root = tmp_path / "avsbench_data"
    write_s4(root / "Single-source" / "s4_data", root / "Single-source" / "s4_meta_data.csv")
    write_ms3(root / "Multi-sources" / "ms3_data", root / "Multi-sources" / "ms3_meta_data.csv")
    return root


def test_s4_reader_official_layout(official):
    reader = AvsReader(official, "s4", "test")
    videos = list(reader)
    assert len(reader) == len(videos) == 2
    first = videos[0]
    assert [s.meta["frame"] for s in first] == [1, 2, 3, 4, 5]
    assert {s.meta["video"] for s in first} == {"vidA"} and first[0].meta["category"] == "dog_barking"
    for k, sample in enumerate(first, 1):
        np.testing.assert_array_equal(sample.image, frame(k))
        np.testing.assert_array_equal(sample.masks[0], gt_mask(0, k))
    # one Audio reference per video, the wav read once (16 kHz, 1 s)
    audio = first[0].references[0]
    assert all(s.references[0] is audio for s in first)
    assert audio.sample_rate == RATE and tuple(audio.source.shape) == (1, RATE)
    expected = soundfile.read(official / "Single-source" / "s4_data" / "audio_wav" / "test" / "dog_barking" /
                              "vidA.wav", dtype="float32")[0]
    np.testing.assert_allclose(audio.source[0].numpy(), expected)


def test_s4_train_has_only_the_first_frame(official):
    (video,) = list(AvsReader(official / "Single-source", "s4", "train"))
    assert len(video) == 1 and video[0].meta["frame"] == 1


def test_ms3_reader_official_layout(official):
    videos = list(AvsReader(official, "ms3", "test"))
    assert [v[0].meta["video"] for v in videos] == ["msA", "msB"]
    second = videos[1]
    for k, sample in enumerate(second, 1):
        np.testing.assert_array_equal(sample.image, frame(10 + k))
        np.testing.assert_array_equal(sample.masks[0], gt_mask(1, k))
    assert not second[2].masks.any()  # (1 + 3) % 4 == 0: an empty ground truth


def test_redistributed_avs1_layout(tmp_path):
    root = tmp_path / "copy"
    write_s4(root / "AVS1" / "s4", root / "AVS1" / "s4" / "s4_meta_data.csv")
    write_ms3(root / "AVS1" / "ms3", root / "AVS1" / "ms3_meta_data.csv")  # CSV one level up also works
    for data in (root, root / "AVS1", root / "AVS1" / "s4"):
        assert len(list(AvsReader(data, "s4", "test"))) == 2
    assert len(list(AvsReader(root, "ms3", "val"))) == 1


def test_avs_reader_errors(official, tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'val'.*test, train"):
        AvsReader(official, "s4", "val")
    with pytest.raises(ValueError, match="subset"):
        AvsReader(official, "s5", "test")
    with pytest.raises(FileNotFoundError, match="found no AVSBench s4 data"):
        AvsReader(official / "Single-source" / "s4_data" / "gt_masks", "s4", "test")
    wav = official / "Single-source" / "s4_data" / "audio_wav" / "test" / "baby_laughter" / "vidB.wav"
    wav.unlink()
    with pytest.raises(FileNotFoundError, match="vidB.wav"):
        list(AvsReader(official, "s4", "test"))


def test_run_avs_end_to_end_scores_each_video(tiny_model, official, tmp_path):
    out = run_avs(tiny_model, AvsReader(official, "ms3", "test"), overlays=tmp_path / "png", progress=False)
    assert out.counts["videos"] == 2 and out.counts["frames"] == 10
    assert set(out.metrics) == {"miou", "fscore"}
    assert len(list((tmp_path / "png").glob("*.png"))) == 10
    if out.counts["frames_without_mask"] == 10:  # the untrained model answers without masks
        per_video = []
        for seed in (0, 1):
            gt = torch.from_numpy(np.stack([gt_mask(seed, k) for k in range(1, 6)]))
            logits = torch.full(gt.shape, NO_MASK_LOGIT)
            per_video.append((avs_miou(logits, gt), avs_fscore(logits, gt)))
        assert out.metrics["miou"] == pytest.approx(np.mean([m for m, _ in per_video]))
        assert out.metrics["fscore"] == pytest.approx(np.mean([f for _, f in per_video]))
