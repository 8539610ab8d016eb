"""AnyRef: multi-modal referring segmentation with a large multimodal language model.

    from anyref import AnyRef, Box, ExampleImage, Audio
    model = AnyRef.from_pretrained("synthref-tiny")
    out = model.segment("photo.png", "the small red circle")   # out.masks: K x H x W bool
"""
from anyref.api import AnyRef
from anyref.outputs import AnyRefOutput, SegmentResult
from anyref.references import Audio, Box, ExampleImage, MaskRef
from anyref.samples import OBJ, ReferringSample

__all__ = ["AnyRef", "Box", "ExampleImage", "Audio", "MaskRef", "SegmentResult", "AnyRefOutput",
           "ReferringSample", "OBJ"]
