"""Encoders AnyRef builds on, wrapped from their upstream packages or written against their reference code."""
from encoders.audio import audio_clips, read_audio
from encoders.imagebind_audio import ImageBindAudioConfig, ImageBindAudioEncoder, load_imagebind_audio

__all__ = ["audio_clips", "read_audio", "ImageBindAudioEncoder", "ImageBindAudioConfig", "load_imagebind_audio"]
