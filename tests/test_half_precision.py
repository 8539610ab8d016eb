"""The model in bfloat16 and float16, as GPUs run it (docs/lisa.md: ``.to(torch.bfloat16)``): inference with text
and box references, and a training step, on CPU. Upstream pieces that refuse half precision (segment-anything's
positional encoding, torchvision's RoIAlign, numpy) are run in float32 around them."""
import numpy as np
import pytest
import torch

from anyref import OBJ, Box, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import build_tiny
from tests.conftest import scene
from train.objectives import TrainingObjective


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inference_and_training_step(dtype):
    model = build_tiny(seed=0).to(dtype)
    image = scene(0)
    for reference in ("the red circle", Box(10.2, 8.0, 60.7, 50.3)):
        result = model.segment(image, reference, allow_untrained=True)
        assert result.masks.shape[1:] == image.shape[:2]
    masks = np.zeros((1, *image.shape[:2]), dtype=bool)
    masks[0, 10:40, 20:60] = True
    samples = [ReferringSample(image, [Box(20, 10, 60, 40)], "describe", ["red circle ", OBJ, "."], masks),
               ReferringSample(image, ["the red circle"], "segment", ["red circle ", OBJ, "."], masks)]
    batch = collate([prepare(s, model.builder) for s in samples], model.ids.pad).to(model.device, dtype)
    assert batch.boxes.dtype == torch.float32  # pixel coordinates are not rounded to half precision
    output = TrainingObjective(model.train()).to(dtype)(batch)  # as DeepSpeed casts the engine's module
    output.loss.backward()
    assert torch.isfinite(output.loss) and output.mask_logits
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == dtype for g in grads)
