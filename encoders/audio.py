"""Audio reading and ImageBind's audio preprocessing (3 log-mel clips per sound), written against torch/torchaudio.

``audio_clips`` reproduces ImageBind's ``data.load_and_transform_audio_data`` bit for bit given the same waveform,
including its quirks (see ``audio_clips``); ``tests/test_audio.py`` checks it against ImageBind's own function.
``read_audio`` uses soundfile because ``torchaudio.load`` needs FFmpeg libraries that are often missing.
"""
from __future__ import annotations

import math
import numbers
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio

__all__ = ["audio_clips", "read_audio", "SAMPLE_RATE", "NUM_CLIPS", "CLIP_SECONDS", "N_MELS", "TARGET_LEN"]

SAMPLE_RATE = 16_000  # ImageBind's audio rate (Hz)
NUM_CLIPS = 3  # clips per sound; AnyRef feeds each clip's embedding as one token
CLIP_SECONDS = 2
N_MELS = 128
TARGET_LEN = 204  # fbank frames per clip after padding/truncation
FBANK_MEAN = -4.268  # AudioSet statistics ImageBind normalises with
FBANK_STD = 9.138
_FRAME_SAMPLES = 400  # one 25 ms kaldi window at 16 kHz: the shortest audio that yields a frame
# The largest |sample| accepted (+18 dBFS). Samples belong in [-1, 1], but float files may hold overs beyond full
# scale (mastering, resampling, effects) and unit-variance noise (peaks near 5) is common test input, so the bound is
# generous; it is meant for samples left at 16-bit scale (w * 32768), which exceed it for any sound louder than
# -72 dBFS and would shift every log-mel value by about 2 * ln(32768) = 21 (2.3 of ImageBind's std).
MAX_PEAK = 8.0


def read_audio(path: str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read an audio file with soundfile (WAV, FLAC, OGG, MP3, ... as libsndfile supports).

    Returns (waveform, sample_rate): waveform is a contiguous float32 [C, T] tensor in [-1, 1] (integer PCM is
    scaled as torchaudio.load scales it), sample_rate in Hz.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"audio file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"audio path {path} is not a file; give the path of an audio file such as a .wav")
    try:
        data, sample_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, OSError) as error:
        raise ValueError(
            f"could not decode audio file {path} ({error}); it may be corrupt, truncated or in a format "
            "libsndfile cannot read - convert it to WAV or FLAC"
        ) from error
    # soundfile gives [T, C]; AnyRef (like torchaudio) uses [C, T].
    waveform = torch.from_numpy(np.ascontiguousarray(data.T))
    _check_waveform(waveform, f"audio file {path}")
    return waveform, int(sample_rate)


def audio_clips(waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
    """ImageBind's audio input for one sound: 3 normalised log-mel clips of 2 s.

    waveform: float [C, T] or [T] samples in [-1, 1], any channel count (tensor or numpy; float64 is cast to
        float32, the dtype torchaudio.load gives ImageBind). It is not modified. Peaks above MAX_PEAK (8) are
        refused: such samples are at integer scale (divide 16-bit PCM by 32768).
    sample_rate: its rate in Hz (any positive integer; resampled to 16 kHz with torchaudio's defaults).

    Returns a float32 [3, 1, 128, 204] tensor, the same as ImageBind's ``load_and_transform_audio_data``:
    - clip i spans [i * step, i * step + 2] s with step = max(duration - 2, 0) / 2, computed as pytorchvideo's
      ConstantClipsPerVideoSampler (the git version ImageBind pins) does it (see ``_clip_bounds``);
    - each clip is a view into the waveform whose mean (over all channels) is subtracted IN PLACE, so a later
      overlapping clip sees already-shifted samples (ImageBind's quirk, reproduced: ignoring it changes the
      output wherever clips overlap, by 0.37 on a 2.5 s test tone with a 0.05 DC offset);
    - kaldi fbank of channel 0 only (as torchaudio's fbank reads a multi-channel input);
    - frames zero-padded on the right or truncated to 204, then normalised with mean -4.268 and std 9.138.
    Audio shorter than 2 s gives 3 identical spans over the whole sound, each zero-padded after its last frame.
    Audio under 25 ms (after resampling) has no fbank frame and is refused (ImageBind fails on it too).
    """
    wave = _as_waveform(waveform)
    rate = _check_sample_rate(sample_rate)
    _check_waveform(wave, "waveform")
    if rate != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, orig_freq=rate, new_freq=SAMPLE_RATE)
    else:
        wave = wave.clone()  # the in-place mean subtraction below must not reach the caller's tensor
    if wave.shape[1] < _FRAME_SAMPLES:
        raise ValueError(
            f"audio is too short: {wave.shape[1]} samples at 16 kHz, but one 25 ms fbank frame needs "
            f"{_FRAME_SAMPLES}; give at least 25 ms of sound (ImageBind is trained on 2 s clips)"
        )
    clips = []
    for start, end in _clip_bounds(wave.shape[1]):
        clip = wave[:, start:end]
        clip -= clip.mean()  # in place on the view, as ImageBind does (see docstring)
        clips.append(_log_mel(clip))
    return torch.stack(clips)


def _clip_bounds(num_samples: int) -> list[tuple[int, int]]:
    """Sample index spans [start, end) of the 3 clips of a 16 kHz sound, as ImageBind computes them.

    ImageBind passes the duration as a float (num_samples / 16000); the sampler subtracts 2 in float arithmetic,
    then works exactly in Fractions; the seconds are turned into sample indices with int() (truncation).
    """
    duration = num_samples / SAMPLE_RATE
    max_start = Fraction(max(duration - CLIP_SECONDS, 0))
    step = max_start / max(NUM_CLIPS - 1, 1)
    bounds = []
    for i in range(NUM_CLIPS):
        start = step * i
        bounds.append((int(start * SAMPLE_RATE), int((start + CLIP_SECONDS) * SAMPLE_RATE)))
    return bounds


def _log_mel(clip: torch.Tensor) -> torch.Tensor:
    """[C, L] zero-mean clip -> normalised [1, 128, 204] kaldi log-mel (channel 0)."""
    fbank = torchaudio.compliance.kaldi.fbank(
        clip,
        htk_compat=True,
        sample_frequency=SAMPLE_RATE,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=N_MELS,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    ).transpose(0, 1)  # [128, frames]
    pad = TARGET_LEN - fbank.shape[1]
    if pad > 0:
        fbank = torch.nn.functional.pad(fbank, (0, pad), mode="constant", value=0)
    else:
        fbank = fbank[:, :TARGET_LEN]
    return ((fbank - FBANK_MEAN) / FBANK_STD).unsqueeze(0)


def _as_waveform(waveform: object) -> torch.Tensor:
    """Tensor/array [T] or [C, T] -> contiguous float32 [C, T] tensor (a copy only where needed)."""
    if isinstance(waveform, np.ndarray):
        if waveform.dtype.kind != "f":
            raise TypeError(
                f"waveform has dtype {waveform.dtype}; give float samples in [-1, 1] "
                "(e.g. divide 16-bit PCM by 32768, or use read_audio)"
            )
        waveform = torch.from_numpy(waveform)
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(
            f"waveform must be a torch.Tensor or numpy array of shape [C, T] or [T], got {type(waveform).__name__}"
        )
    if not waveform.is_floating_point():
        raise TypeError(
            f"waveform has dtype {waveform.dtype}; give float samples in [-1, 1] "
            "(e.g. divide 16-bit PCM by 32768, or use read_audio)"
        )
    if waveform.ndim == 1:
        waveform = waveform.unsqueeze(0)
    if waveform.ndim != 2:
        raise ValueError(f"waveform must be [C, T] or [T], got shape {tuple(waveform.shape)}")
    if 0 < waveform.shape[1] < waveform.shape[0]:  # (empty audio is reported later)
        raise ValueError(
            f"waveform of shape {tuple(waveform.shape)} has more channels than samples; it must be [C, T] "
            "(transpose a [T, C] array such as soundfile.read's)"
        )
    return waveform.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_sample_rate(sample_rate: object) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, numbers.Real):
        raise TypeError(f"sample_rate must be a number of Hz such as 16000, got {type(sample_rate).__name__}")
    if not (math.isfinite(sample_rate) and sample_rate > 0 and int(sample_rate) == sample_rate):
        raise ValueError(f"sample_rate must be a positive whole number of Hz such as 16000, got {sample_rate}")
    return int(sample_rate)


def _check_waveform(waveform: torch.Tensor, source: str) -> None:
    """Refuse empty, non-finite or out-of-range audio (peak above MAX_PEAK); ``source`` names it in the message."""
    if waveform.numel() == 0:
        raise ValueError(f"{source} is empty (shape {tuple(waveform.shape)}); give at least 25 ms of sound")
    finite = torch.isfinite(waveform)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{source} has {bad} NaN or infinite sample(s); clean or re-export the audio "
            "(e.g. replace them with torch.nan_to_num) before using it"
        )
    peak = float(waveform.abs().max())
    if peak > MAX_PEAK:
        raise ValueError(
            f"{source} has samples up to {peak:.6g} in magnitude, but float audio belongs in [-1, 1]; samples at "
            "16-bit scale must be divided by 32768 (int16), at 32-bit scale by 2147483648 (int32)"
        )
