"""AVSBench (v1) single-source S4 and multi-source MS3, read from the release's own files.

Official layout (``--data`` is the folder holding the CSV, or its ``Single-source`` / ``Multi-sources`` parent):

    s4_meta_data.csv                                         name, start_time, category, split
    s4_data/visual_frames/{split}/{category}/{name}/{name}_{1..5}.png
    s4_data/gt_masks/{split}/{category}/{name}/{name}_{k}.png      (train: frame 1 only; val/test: 1..5)
    s4_data/audio_wav/{split}/{category}/{name}.wav
    ms3_meta_data.csv                                        name, ..., split
    ms3_data/visual_frames/{name}/{name}.mp4_{1..5}.png
    ms3_data/gt_masks/{split}/{name}/{name}_{1..5}.png
    ms3_data/audio_wav/{split}/{name}.wav

Redistributed copies put the same files below ``AVS1/{s4,ms3}/{audio_wav,gt_masks,visual_frames}`` with the CSV
beside those folders (or one level up); ``--data`` may be the copy's root, ``AVS1`` or ``AVS1/s4`` itself.
Masks are 0/255 PNGs. The ``audio_log_mel`` pickles (VGGish features) are not used: AnyRef takes the raw wav.

Items are whole videos: iterating yields, per video, the list of its annotated frames as ReferringSamples that
share one Audio reference (the video's wav, read once). The metrics score each video on its own.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterator

from anyref.references import Audio
from anyref.samples import OBJ, ReferringSample
from encoders.audio import read_audio
from eval.datasets._common import check_split, read_binary_mask, read_image, require_dir, require_file

__all__ = ["AVS_SUBSETS", "AvsReader", "locate_avsbench"]

AVS_SUBSETS = ("s4", "ms3")
FRAMES_PER_VIDEO = 5
_PARENT = {"s4": "Single-source", "ms3": "Multi-sources"}
_FOLDERS = ("visual_frames", "gt_masks", "audio_wav")


def _has_folders(path: Path) -> bool:
    return all((path / f).is_dir() for f in _FOLDERS)


def locate_avsbench(data: str | Path, subset: str) -> tuple[Path, Path]:
    """(folder holding visual_frames / gt_masks / audio_wav, metadata CSV) for the official or AVS1 layout."""
    if subset not in AVS_SUBSETS:
        raise ValueError(f"unknown AVSBench subset {subset!r}; choose one of {AVS_SUBSETS}")
    root = require_dir(data, "data directory", "pass --data pointing at the AVSBench release (or its AVS1 copy)")
    csv_name = f"{subset}_meta_data.csv"
    tried = []
    # official: {root}/{subset}_data next to {root}/{subset}_meta_data.csv
    for base in (root, root / _PARENT[subset], root / "avsbench_data" / _PARENT[subset]):
        tried.append(str(base / f"{subset}_data"))
        if _has_folders(base / f"{subset}_data"):
            return base / f"{subset}_data", require_file(base / csv_name, "metadata file",
                                                        f"the release keeps it beside {subset}_data/")
    # redistributed: AVS1/{subset}/{visual_frames,...}
    for folder in (root / "AVS1" / subset, root / subset, root):
        tried.append(str(folder))
        if _has_folders(folder):
            for candidate in (folder / csv_name, folder.parent / csv_name):
                if candidate.is_file():
                    return folder, candidate
            raise FileNotFoundError(f"found AVSBench {subset} folders in {folder} but no {csv_name} in it or "
                                    "its parent; copy the metadata CSV of the release there")
    raise FileNotFoundError(f"found no AVSBench {subset} data (folders {', '.join(_FOLDERS)}); looked in: "
                            f"{', '.join(tried)}")


def _read_metadata(path: Path, subset: str) -> list[dict]:
    """Rows {name, category, split}; by header names when present, else by position (name, -, category, split)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.reader(handle) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"metadata file {path} is empty")
    header = [c.strip().lower() for c in rows[0]]
    if "split" in header:
        rows = rows[1:]
        name_col = header.index("name") if "name" in header else 0
        cat_col = header.index("category") if "category" in header else 2
        split_col = header.index("split")
    else:
        name_col, cat_col, split_col = 0, 2, -1
    videos = []
    for row in rows:
        videos.append({"name": row[name_col].strip(), "split": row[split_col].strip(),
                       "category": row[cat_col].strip() if subset == "s4" and len(row) > cat_col else ""})
    return videos


class AvsReader:
    """AVSBench videos of one split. len() is the number of videos; each item is a list of ReferringSample, one
    per annotated frame (val/test: 5), with references [Audio(wav)] and the frame's ground-truth mask
    (1 x H x W, maybe empty). meta: video, frame (1-based), category, split, wav."""

    def __init__(self, data: str | Path, subset: str = "s4", split: str = "test") -> None:
        self.base, self.metadata = locate_avsbench(data, subset)
        self.dataset, self.subset, self.split = f"avsbench-{subset}", subset, split
        videos = _read_metadata(self.metadata, subset)
        check_split(split, {v["split"] for v in videos}, f"AVSBench {subset} ({self.metadata})")
        self.videos = [v for v in videos if v["split"] == split]

    def __len__(self) -> int:
        return len(self.videos)

    def _paths(self, video: dict, k: int) -> tuple[Path, Path]:
        name, split, category = video["name"], self.split, video["category"]
        if self.subset == "s4":
            return (self.base / "visual_frames" / split / category / name / f"{name}_{k}.png",
                    self.base / "gt_masks" / split / category / name / f"{name}_{k}.png")
        return (self.base / "visual_frames" / name / f"{name}.mp4_{k}.png",
                self.base / "gt_masks" / split / name / f"{name}_{k}.png")

    def wav_path(self, video: dict) -> Path:
        parts = [self.split, video["category"]] if self.subset == "s4" else [self.split]
        return self.base.joinpath("audio_wav", *parts, f"{video['name']}.wav")

    def _frames(self, video: dict) -> list[int]:
        # S4's train split annotates only the first frame; every other split annotates all five.
        if self.subset == "s4" and self.split == "train":
            return [1]
        return list(range(1, FRAMES_PER_VIDEO + 1))

    def __iter__(self) -> Iterator[list[ReferringSample]]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, item: int) -> list[ReferringSample]:
        video = self.videos[item]
        wav = self.wav_path(video)
        waveform, sample_rate = read_audio(wav)
        audio = Audio(waveform, sample_rate=sample_rate)
        label = video["category"].replace("_", " ") or "the sounding object"
        frames = []
        for k in self._frames(video):
            frame_path, mask_path = self._paths(video, k)
            image, mask = read_image(frame_path), read_binary_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise ValueError(f"mask {mask_path} is {mask.shape[::-1]} but frame {frame_path} is "
                                 f"{image.shape[1::-1]}")
            frames.append(ReferringSample(
                image=image, references=[audio], answer=[label, " ", OBJ, "."], masks=mask[None],
                source=self.dataset,
                meta={"video": video["name"], "frame": k, "category": video["category"], "split": self.split,
                      "wav": str(wav)}))
        return frames
