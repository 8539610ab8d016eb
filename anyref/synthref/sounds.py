"""Synthetic sounds: each shape kind makes its own kind of sound, never the same waveform twice.

circle: a steady hum (~330 Hz with vibrato)        square: a low buzz (~110 Hz, odd harmonics)
triangle: short high beeps (~1.4 kHz, 3-4.5 per s)   star: repeated rising chirps (~0.5 -> 2.5 kHz)
cross: a band of hiss (~3-5 kHz, slowly pulsing)    diamond: a two-tone trill (~650 / 880 Hz, 6-9 Hz)
Pitch, rate and phase are jittered per sound; background noise (white + rumble) is added at 8-20 dB SNR.
"""
from __future__ import annotations

import math

import numpy as np

from anyref.synthref.vocabulary import SHAPES

__all__ = ["SOUND_KINDS", "render_sound"]

SOUND_KINDS = {"circle": "hum", "square": "buzz", "triangle": "beeps", "star": "chirps", "cross": "hiss",
               "diamond": "trill"}
assert set(SOUND_KINDS) == set(SHAPES)


def _phase(freq: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Running phase of an instantaneous frequency track (Hz per sample), random start."""
    return (2 * np.pi / sample_rate) * np.cumsum(freq, dtype=np.float64).astype(np.float32) + rng.uniform(0, 2 * np.pi)


def _hum(rng, t, sr):
    f = 330.0 * rng.uniform(0.85, 1.15) * (1 + 0.012 * np.sin(2 * math.pi * rng.uniform(4, 6) * t + rng.uniform(0, 6)))
    ph = _phase(f, sr, rng)
    return (np.sin(ph) + 0.3 * np.sin(2 * ph)) * (1 + 0.2 * np.sin(2 * math.pi * rng.uniform(0.3, 0.8) * t))


def _buzz(rng, t, sr):
    ph = 2 * math.pi * 110.0 * rng.uniform(0.85, 1.15) * t + rng.uniform(0, 2 * math.pi)
    return sum(np.sin(k * ph) / k for k in (1, 3, 5, 7, 9))


def _beeps(rng, t, sr):
    env = np.maximum(0.0, np.sin(2 * math.pi * (rng.uniform(3.0, 4.5) * t + rng.random()))) ** 4
    return env * np.sin(2 * math.pi * 1400.0 * rng.uniform(0.88, 1.12) * t + rng.uniform(0, 2 * math.pi))


def _chirps(rng, t, sr):
    period = rng.uniform(0.35, 0.55)
    tau = ((t + rng.uniform(0, period)) % period) / period  # 0 -> 1 within each sweep
    j = rng.uniform(0.88, 1.12)
    f = 500.0 * j * (5.0 ** tau)  # exponential sweep 500 -> 2500 Hz
    return np.sin(math.pi * tau) ** 0.5 * np.sin(_phase(f, sr, rng))


def _hiss(rng, t, sr):
    width = 8  # moving average: noise below ~1 kHz, shifted up to a band around ~3.9 kHz by a carrier
    running = np.cumsum(rng.standard_normal(t.size + width, dtype=np.float32))
    low = running[width:] - running[:-width]
    carrier = np.sin(2 * np.pi * 3900.0 * rng.uniform(0.9, 1.1) * t + rng.uniform(0, 2 * math.pi))
    return low * carrier * (1 + 0.35 * np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * t + rng.uniform(0, 6)))


def _trill(rng, t, sr):
    j = rng.uniform(0.88, 1.12)
    high = ((t * rng.uniform(6.0, 9.0) + rng.random()) % 1.0) < 0.5
    return np.sin(_phase(np.where(high, 880.0 * j, 650.0 * j), sr, rng))


_MAKERS = {"hum": _hum, "buzz": _buzz, "beeps": _beeps, "chirps": _chirps, "hiss": _hiss, "trill": _trill}


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x * x))), 1e-8)


def render_sound(
    rng: np.random.Generator, shapes: list[str], sample_rate: int = 16000, seconds: float = 4.0
) -> np.ndarray:
    """The sound of the given shape kinds playing together (one kind, or a mixture of several).

    Each source is scaled to unit RMS times a random gain in [0.6, 1.0]; background noise is added at 8-20 dB SNR;
    the result's peak is set to a random level in [0.3, 0.9]. Returns 1 x T float32, T = round(seconds * sample_rate).
    """
    if not shapes:
        raise ValueError("render_sound needs at least one shape")
    n = int(round(seconds * sample_rate))
    t = np.arange(n, dtype=np.float32) / np.float32(sample_rate)  # float32 throughout: 10x faster sines
    wave = sum(rng.uniform(0.6, 1.0) * _unit_rms(_MAKERS[SOUND_KINDS[s]](rng, t, sample_rate)) for s in shapes)
    width = 40  # moving average of the white noise: a low rumble below ~400 Hz
    white = rng.standard_normal(n + width, dtype=np.float32)
    running = np.cumsum(white)
    rumble = running[width:] - running[:-width]
    noise = _unit_rms(white[:n]) + rng.uniform(0.0, 1.0) * _unit_rms(rumble)
    snr_db = rng.uniform(8.0, 20.0)
    signal_rms = float(np.sqrt(np.mean(wave * wave)))
    wave = wave + _unit_rms(noise) * signal_rms * 10 ** (-snr_db / 20)
    wave = wave * (rng.uniform(0.3, 0.9) / max(float(np.abs(wave).max()), 1e-8))
    return wave.astype(np.float32)[None, :]
