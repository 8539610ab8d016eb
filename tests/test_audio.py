"""ImageBind audio branch and preprocessing against ImageBind's own code (see imagebind_reference.py for what is
ImageBind's code and what is patched), plus input validation and audio reading. CPU, a few seconds each."""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import soundfile
import torch
from imagebind_reference import (
    HeadConstantClipsPerVideoSampler,
    build_reference_model,
    imagebind_data_module,
    imagebind_model_module,
)

from encoders import ImageBindAudioConfig, ImageBindAudioEncoder, audio_clips, load_imagebind_audio, read_audio
from encoders.checkpoints import CheckpointError
from encoders.imagebind_audio import AUDIO_PREFIXES

# ---------------------------------------------------------------- encoder vs ImageBind's ImageBindModel


def _randomised_reference(config: ImageBindAudioConfig, seed: int) -> torch.nn.Module:
    """ImageBind's model, eval mode, with random weights everywhere. Its matrices are random from its own init;
    its vectors (LN weights, zero biases, the fixed logit scale) start constant, so they are perturbed: a wrongly
    mapped or unused weight then changes the output."""
    torch.manual_seed(seed)
    model = build_reference_model(config)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.ndim <= 1:
                tensor.add_(torch.randn_like(tensor) * 0.05)
    return model


def _audio_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith(AUDIO_PREFIXES)}


@pytest.mark.parametrize("size", ["tiny", "huge"])
def test_encoder_equals_imagebind_for_same_weights(size):
    config = getattr(ImageBindAudioConfig, size)()
    reference = _randomised_reference(config, seed=0)
    # The whole model's state dict (official key layout, other modalities too): only audio keys are kept.
    encoder = load_imagebind_audio(ImageBindAudioEncoder(config), reference.state_dict()).eval()

    official = _audio_state(reference)
    assert sum(v.numel() for v in encoder.state_dict().values()) == sum(v.numel() for v in official.values())
    clips = torch.randn(3, 1, 128, 204, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = encoder(clips)
        theirs = reference({"audio": clips})["audio"]  # 4-D input: ImageBind returns one row per clip
    assert ours.shape == (3, config.out_dim)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    # The perturbed (loaded) logit scale is used, not the config's 20.
    scale = official["modality_postprocessors.audio.1.log_logit_scale"].exp()
    assert not torch.allclose(scale, torch.tensor(20.0))
    torch.testing.assert_close(ours.norm(dim=-1), scale.expand(3), rtol=1e-5, atol=0)


def test_load_official_layout_pth_file(tmp_path):
    config = ImageBindAudioConfig.tiny()
    reference = _randomised_reference(config, seed=5)
    path = tmp_path / "imagebind.pth"
    torch.save(reference.state_dict(), path)
    encoder = load_imagebind_audio(ImageBindAudioEncoder(config), path).eval()
    assert torch.equal(encoder.blocks[1].attn.bias_k, reference.modality_trunks["audio"].blocks[1].attn.bias_k)
    clips = torch.randn(2, 3, 1, 128, 204, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = encoder(clips.flatten(0, 1)).unflatten(0, (2, 3))
        theirs = reference({"audio": clips})["audio"]  # 5-D input: ImageBind's mean over each sound's clips
    torch.testing.assert_close(ours.mean(1), theirs, rtol=0, atol=1e-6)


def test_encoder_training_mode_matches_imagebind_drop_path():
    # Drop path in ImageBind's trunk acts per token position (sequence-first layout); the same seed must give
    # the same drops, hence the same outputs, and eval mode none at all.
    config = ImageBindAudioConfig(embed_dim=32, depth=3, num_heads=2, out_dim=64, drop_path=0.5)
    reference = _randomised_reference(config, seed=2)
    encoder = load_imagebind_audio(ImageBindAudioEncoder(config), reference.state_dict())
    clips = torch.randn(4, 1, 128, 204, generator=torch.Generator().manual_seed(3))
    reference.train()
    encoder.train()
    torch.manual_seed(7)
    theirs = reference({"audio": clips})["audio"]
    torch.manual_seed(7)
    ours = encoder(clips)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    encoder.eval()
    with torch.no_grad():
        first, second = encoder(clips), encoder(clips)
    assert torch.equal(first, second)
    assert (first - ours).abs().max() > 1e-3  # training mode really dropped something


def test_huge_config_is_imagebind_huge(monkeypatch):
    # The fixed logit scale buffer starts where ImageBind's does (log 20, float32).
    official = _audio_state(build_reference_model(ImageBindAudioConfig.tiny()))
    assert torch.equal(
        ImageBindAudioEncoder(ImageBindAudioConfig.tiny()).log_logit_scale,
        official["modality_postprocessors.audio.1.log_logit_scale"],
    )
    # Record the arguments imagebind_huge() gives ImageBindModel (without building the 1.2 B-parameter model).
    module = imagebind_model_module()
    signature, arguments = inspect.signature(module.ImageBindModel), {}

    def record(**kwargs):
        bound = signature.bind(**kwargs)
        bound.apply_defaults()
        arguments.update(bound.arguments)

    monkeypatch.setattr(module, "ImageBindModel", record)
    module.imagebind_huge(pretrained=False)
    huge = ImageBindAudioConfig.huge()
    ours = (huge.embed_dim, huge.depth, huge.num_heads, huge.out_dim, huge.drop_path, huge.kernel_size,
            huge.stride, huge.n_mels, huge.target_len)
    names = ("audio_embed_dim", "audio_num_blocks", "audio_num_heads", "out_embed_dim", "audio_drop_path",
             "audio_kernel_size", "audio_stride", "audio_num_mel_bins", "audio_target_len")
    assert ours == tuple(arguments[name] for name in names)


def test_config_sizes_and_validation():
    huge = ImageBindAudioConfig.huge()
    assert (huge.embed_dim, huge.depth, huge.num_heads, huge.out_dim, huge.drop_path) == (768, 12, 12, 1024, 0.1)
    assert huge.grid == (12, 19) and huge.num_tokens == 229
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ImageBindAudioConfig(embed_dim=30, num_heads=4)
    with pytest.raises(ValueError, match="drop_path"):
        ImageBindAudioConfig(drop_path=1.0)
    encoder = ImageBindAudioEncoder(ImageBindAudioConfig.tiny())
    with pytest.raises(ValueError, match=r"N x 1 x 128 x 204"):
        encoder(torch.zeros(3, 128, 204))


def test_load_names_missing_unexpected_and_mismatched_keys():
    config = ImageBindAudioConfig.tiny()
    state = _audio_state(build_reference_model(config))
    encoder = ImageBindAudioEncoder(config)
    before = {k: v.clone() for k, v in encoder.state_dict().items()}

    broken = dict(state)
    del broken["modality_trunks.audio.blocks.1.attn.bias_k"]
    broken["modality_trunks.audio.blocks.7.norm_1.weight"] = torch.ones(32)
    broken["modality_heads.audio.2.weight"] = torch.zeros(10, 32)
    with pytest.raises(CheckpointError) as info:
        load_imagebind_audio(encoder, broken)
    message = str(info.value)
    assert "missing keys: modality_trunks.audio.blocks.1.attn.bias_k" in message
    assert "unexpected keys: modality_trunks.audio.blocks.7.norm_1.weight" in message
    assert "modality_heads.audio.2.weight (checkpoint (10, 32) vs encoder (64, 32))" in message
    assert all(torch.equal(v, before[k]) for k, v in encoder.state_dict().items())  # nothing half-loaded

    with pytest.raises(CheckpointError, match="no audio keys"):
        load_imagebind_audio(encoder, {"modality_trunks.vision.blocks.0.norm_1.weight": torch.ones(8)})
    with pytest.raises(TypeError, match="checkpoint path or a state dict"):
        load_imagebind_audio(encoder, 3)


# ---------------------------------------------------------------- audio_clips vs ImageBind's data.py


def _waveform(channels: int, samples: int, rate: int, seed: int) -> torch.Tensor:
    """[channels, samples]: tones + noise with a different DC offset per channel, so mean subtraction matters."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / rate
    rows = [0.3 * torch.sin(2 * math.pi * (220 + 330 * c) * t) + 0.05 * torch.randn(t.shape, generator=g) + 0.1 * c
            for c in range(channels)]
    return torch.stack(rows) + 0.05


def _imagebind_clips(monkeypatch, waveform: torch.Tensor, rate: int) -> torch.Tensor:
    """ImageBind's ``load_and_transform_audio_data`` on ``waveform``: [3, 1, 128, 204]."""
    data = imagebind_data_module()
    monkeypatch.setattr(data, "ConstantClipsPerVideoSampler", HeadConstantClipsPerVideoSampler)
    monkeypatch.setattr(data.torchaudio, "load", lambda path: (waveform.clone(), rate))  # no FFmpeg here
    return data.load_and_transform_audio_data(["given.wav"], "cpu")[0]


CASES = {  # (channels, samples, sample rate)
    "stereo_5s_44k1": (2, 220_500, 44_100),
    "mono_1.3s_shorter_than_a_clip": (1, 28_665, 22_050),
    "mono_2.5s_overlapping_clips": (1, 40_000, 16_000),
    "three_channels_7s_16k": (3, 112_000, 16_000),
    # 3.0000625 s: ImageBind's float duration puts the 3rd clip at samples [16000, 48000); exact Fractions of
    # samples / 16000 would give [16001, 48001).
    "mono_48001_samples_float_duration": (1, 48_001, 16_000),
}


@pytest.mark.parametrize("case", CASES)
def test_audio_clips_bit_exact_with_imagebind(case, monkeypatch):
    channels, samples, rate = CASES[case]
    waveform = _waveform(channels, samples, rate, seed=len(case))
    original = waveform.clone()
    expected = _imagebind_clips(monkeypatch, waveform, rate)
    ours = audio_clips(waveform, rate)
    assert ours.shape == (3, 1, 128, 204) and ours.dtype == torch.float32
    assert torch.equal(ours, expected), f"max abs diff {(ours - expected).abs().max().item()}"
    assert torch.equal(waveform, original)  # the in-place quirk stays inside audio_clips
    assert torch.equal(audio_clips(waveform.numpy().astype(np.float64), rate), expected)  # numpy, float64
    if channels == 1:
        assert torch.equal(audio_clips(waveform[0], rate), expected)  # [T]


def test_in_place_quirk_matters_for_overlapping_clips(monkeypatch):
    # Without the in-place mean subtraction (each clip centred on its own copy) the 2.5 s case differs,
    # so the bit-exact test above really checks the quirk.
    data = imagebind_data_module()
    waveform = _waveform(1, 40_000, 16_000, seed=0)
    spans = data.get_clip_timepoints(HeadConstantClipsPerVideoSampler(2, 3), waveform.shape[1] / 16_000)
    separate = torch.stack([
        (data.waveform2melspec(waveform[:, int(a * 16_000):int(b * 16_000)].clone(), 16_000, 128, 204) + 4.268)
        / 9.138
        for a, b in spans
    ])
    ours = audio_clips(waveform, 16_000)
    assert torch.equal(ours[0], separate[0])  # the first clip sees untouched samples
    assert (ours - separate).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(5.0, [(0, 2), (1.5, 3.5), (3, 5)]), (2.5, [(0, 2), (0.25, 2.25), (0.5, 2.5)]), (1.3, [(0, 2)] * 3)],
)
def test_reference_sampler_spacing(seconds, expected):
    # The stand-in sampler (not ImageBind's code) must give pytorchvideo git's spacing, max_start / (3 - 1).
    data = imagebind_data_module()
    spans = data.get_clip_timepoints(HeadConstantClipsPerVideoSampler(2, 3), seconds)
    assert [(float(a), float(b)) for a, b in spans] == expected


# ---------------------------------------------------------------- bad inputs and reading files


@pytest.mark.parametrize(
    ("waveform", "rate", "error", "match"),
    [
        (torch.tensor([[0.1, float("nan")] * 400]), 16_000, ValueError, "NaN or infinite"),
        (torch.tensor([0.1, float("inf")] * 400), 16_000, ValueError, "NaN or infinite"),
        (torch.zeros(2, 0), 16_000, ValueError, "empty"),
        (torch.zeros(1, 100), 16_000, ValueError, "too short"),
        (torch.zeros(1, 2, 16_000), 16_000, ValueError, r"\[C, T\] or \[T\]"),
        (torch.zeros(1, 16_000), 0, ValueError, "positive whole number"),
        (torch.zeros(1, 16_000), -8_000, ValueError, "positive whole number"),
        (torch.zeros(1, 16_000), 44_100.5, ValueError, "positive whole number"),
        (torch.zeros(1, 16_000), float("inf"), ValueError, "positive whole number"),
        (torch.zeros(16_000, 2), 16_000, ValueError, r"more channels than samples"),
        (torch.zeros(1, 16_000), "16k", TypeError, "sample_rate"),
        (torch.zeros(1, 16_000, dtype=torch.int16), 16_000, TypeError, "float samples"),
        (np.zeros(16_000, dtype=np.int16), 16_000, TypeError, "float samples"),
        ([0.0] * 16_000, 16_000, TypeError, "torch.Tensor or numpy array"),
        (torch.full((1, 16_000), 3_000.0), 16_000, ValueError, "divided by 32768"),  # 16-bit PCM cast to float
        (np.full(16_000, -8.5, np.float32), 16_000, ValueError, "samples up to 8.5 in magnitude"),
    ],
)
def test_audio_clips_refuses_bad_input(waveform, rate, error, match):
    with pytest.raises(error, match=match):
        audio_clips(waveform, rate)


def test_read_audio_round_trip(tmp_path):
    waveform = _waveform(2, 33_075, 22_050, seed=4).clamp(-1, 1)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, waveform.T.numpy(), 22_050, subtype="FLOAT")
    read, rate = read_audio(path)
    assert rate == 22_050 and isinstance(rate, int)
    assert read.dtype == torch.float32 and read.is_contiguous() and torch.equal(read, waveform)

    pcm = tmp_path / "mono16.wav"
    soundfile.write(pcm, waveform[0].numpy(), 8_000, subtype="PCM_16")
    read, rate = read_audio(pcm)
    assert rate == 8_000 and read.shape == (1, waveform.shape[1])
    assert (read - waveform[:1]).abs().max() <= 1 / 32_768
    assert audio_clips(read, rate).shape == (3, 1, 128, 204)


def test_read_audio_refuses_bad_files(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        read_audio(missing)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    with pytest.raises(ValueError, match="could not decode audio file .*corrupt.wav"):
        read_audio(corrupt)
    with pytest.raises(ValueError, match="is not a file"):
        read_audio(tmp_path)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros((0, 1), dtype=np.float32), 16_000)
    with pytest.raises(ValueError, match="empty.wav is empty"):
        read_audio(empty)
    nan = tmp_path / "nan.wav"
    soundfile.write(nan, np.array([0.1, np.nan] * 400, dtype=np.float32), 16_000, subtype="FLOAT")
    with pytest.raises(ValueError, match="nan.wav has 400 NaN"):
        read_audio(nan)


def test_read_audio_passes_float_overs_and_refuses_integer_scale(tmp_path):
    """A float file may hold samples beyond full scale (here 1.5); one written at 16-bit scale is refused."""
    waveform = _waveform(1, 16_000, 16_000, seed=5)
    loud = tmp_path / "loud.wav"
    soundfile.write(loud, (waveform[0] * 1.5 / waveform.abs().max()).numpy(), 16_000, subtype="FLOAT")
    read, rate = read_audio(loud)
    assert abs(float(read.abs().max()) - 1.5) < 1e-6 and audio_clips(read, rate).shape == (3, 1, 128, 204)
    scaled = tmp_path / "scaled.wav"
    soundfile.write(scaled, (waveform[0] * 32_768).numpy(), 16_000, subtype="FLOAT")
    with pytest.raises(ValueError, match="scaled.wav has samples up to .* divided by 32768"):
        read_audio(scaled)
