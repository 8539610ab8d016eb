"""AnyRef: multi-modal referring segmentation with a large multimodal language model.

    from anyref import AnyRef, Box, ExampleImage, Audio
    model = AnyRef.from_pretrained("synthref-tiny")
    out = model.segment("photo.png", "the small red circle")   # out.masks: K x H x W bool

Names are imported on first use, so that light parts (references, samples, the SynthRef world) load without
torch, transformers and segment-anything.
"""
from importlib import import_module

_EXPORTS = {
    "AnyRef": "anyref.api",
    "SegmentResult": "anyref.outputs",
    "AnyRefOutput": "anyref.outputs",
    "Box": "anyref.references",
    "ExampleImage": "anyref.references",
    "Audio": "anyref.references",
    "MaskRef": "anyref.references",
    "ReferringSample": "anyref.samples",
    "OBJ": "anyref.samples",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'anyref' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
