"""A mask's edges snapped to the image's own: mean-field inference in a conditional random field whose pairwise
term joins nearby pixels of similar colour (the appearance kernel of Krähenbühl and Koltun's dense CRF, as DeepLab
and early referring-segmentation models post-process their masks), over a local window instead of the whole image.

Two labels, object and background. The unary term is the mask's own logit; each pixel is pulled towards the label
of the pixels around it, each with weight ``weight * exp(-d^2 / (2 position_sigma^2) - c^2 / (2 colour_sigma^2))``
for a distance d in pixels and an RGB difference c (0-255 per channel). With a Potts penalty, one mean-field step is

    logit_i <- unary_i + sum_j k_ij (2 q_j - 1),    q = sigmoid(logit)

Only the mask's neighbourhood is computed, for speed: the bounding box of the pixels whose logit is above ``-BAND``,
grown by the window's radius; outside it the logits are kept, so a mask grows at most that far beyond where the
decoder gave it any chance. A mask with no logit above ``-BAND`` is returned as it is.

Cost: the pairwise weights are held for the whole neighbourhood, (2 radius + 1)^2 floats a pixel, with three times
that while they are built: about 20 ms and a few MB for a SynthRef object at 128 px on 2 CPU cores, but about 0.9 GB
for a 500 x 500 neighbourhood of a photograph at radius 7 (distances are in the image's own pixels, so a large image
also wants a larger radius or a downscaled copy).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from anyref.outputs import SegmentResult, masks_and_scores

__all__ = ["MaskCRF", "crf_refine_logits", "crf_refine_found", "crf_refined_result"]

# logits below -BAND (probability under 0.2%) are far from any edge the CRF could move; they bound the region computed
BAND = 6.0


@dataclass(frozen=True)
class MaskCRF:
    """The CRF's settings (``AnyRefConfig.mask_crf`` holds them as a dict): ``iterations`` mean-field steps over a
    (2 radius + 1)^2 window, distances in pixels of the image as given, colours 0-255."""

    iterations: int = 10
    radius: int = 7
    position_sigma: float = 6.0
    colour_sigma: float = 15.0
    weight: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"mask_crf iterations must be an int >= 1, got {self.iterations!r}")
        if not isinstance(self.radius, int) or self.radius < 1:
            raise ValueError(f"mask_crf radius must be an int >= 1 (pixels), got {self.radius!r}")
        for name in ("position_sigma", "colour_sigma", "weight"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"mask_crf {name} must be a number > 0, got {value!r}")

    @classmethod
    def from_dict(cls, settings: dict) -> "MaskCRF":
        """From a config's dict; unknown keys are an error that names the known ones, missing keys take defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"mask_crf has unknown settings {unknown}; known: {sorted(known)}")
        return cls(**settings)

    def as_dict(self) -> dict:
        return asdict(self)


def _neighbourhood(logits: torch.Tensor, margin: int) -> tuple[slice, slice] | None:
    """(rows, cols) of the region computed: where any logit is over -BAND, grown by ``margin``; None if nowhere."""
    live = logits > -BAND
    if not bool(live.any()):
        return None
    rows = torch.nonzero(live.any(1))[:, 0]
    cols = torch.nonzero(live.any(0))[:, 0]
    height, width = logits.shape
    return (slice(max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, height)),
            slice(max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, width)))


def _kernel(image: torch.Tensor, crf: MaskCRF) -> torch.Tensor:
    """Pairwise weights K x h x w (K = (2 radius + 1)^2 offsets, the centre's 0) of a 3 x h x w float image."""
    r, size = crf.radius, 2 * crf.radius + 1
    height, width = image.shape[1:]
    padded = F.pad(image[None], (r, r, r, r), mode="replicate")
    colour = F.unfold(padded, size).view(3, size * size, height, width)
    colour.sub_(image[:, None]).square_()  # in place: this is the costly part, a few million elements
    offsets = torch.arange(-r, r + 1, dtype=torch.float32, device=image.device)
    distance = (offsets[:, None] ** 2 + offsets[None] ** 2).view(-1, 1, 1)
    kernel = colour.sum(0).mul_(-1.0 / (2 * crf.colour_sigma ** 2))
    kernel.add_(distance, alpha=-1.0 / (2 * crf.position_sigma ** 2)).exp_().mul_(crf.weight)
    kernel[size * size // 2] = 0.0
    return kernel


def _message(q: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """sum_j k_ij (2 q_j - 1) for every pixel i of the h x w probabilities ``q``, kernel K x h x w: h x w. The
    neighbours are a strided view of the padded map, not a copy."""
    size = 2 * radius + 1
    padded = F.pad(q[None, None], (radius, radius, radius, radius), mode="replicate")[0, 0]
    neighbours = padded.unfold(0, size, 1).unfold(1, size, 1).reshape(-1, size * size)  # h*w x K
    weighted = torch.bmm(neighbours[:, None], kernel.flatten(1).T[:, :, None]).view(q.shape)
    return 2 * weighted - kernel.sum(0)


def crf_refine_logits(image: np.ndarray, logits: torch.Tensor, crf: MaskCRF) -> torch.Tensor:
    """Mask logits K x H x W (float, at the image's size) after ``crf.iterations`` mean-field steps on the
    H x W x 3 uint8 ``image``: K x H x W float32, computed on the logits' device. Each mask is refined on its own."""
    if image.ndim != 3 or image.shape[:2] != tuple(logits.shape[1:]):
        raise ValueError(f"mask_crf needs an H x W x 3 image of the masks' size {tuple(logits.shape[1:])}, "
                         f"got {image.shape}")
    out = logits.detach().float().clone()
    pixels = torch.from_numpy(np.ascontiguousarray(image)).to(out.device).float().permute(2, 0, 1)  # 3 x H x W
    for k in range(len(out)):
        region = _neighbourhood(out[k], crf.radius)
        if region is None:
            continue
        rows, cols = region
        unary = out[k, rows, cols]
        kernel = _kernel(pixels[:, rows, cols], crf)
        q = unary.sigmoid()
        for _ in range(crf.iterations):
            q = (unary + _message(q, kernel, crf.radius)).sigmoid()
        out[k, rows, cols] = torch.logit(q, eps=1e-6)
    return out


def crf_refine_found(image: np.ndarray, logits: torch.Tensor, crf: MaskCRF) -> torch.Tensor:
    """``crf_refine_logits`` on the masks of ``logits`` (K x H x W) that have a pixel (a logit over 0); an empty mask
    stays as it is, so an answer without a mask stays without one, and a mask the CRF would leave without a pixel
    keeps its logits as given: K x H x W float32. Why: a refinement that erases a mask is no evidence that the object
    is absent, and an empty mask would pass for an answer while the checks after the CRF skip it (they judge
    pixels)."""
    out = logits.detach().float().clone()
    found = (out > 0).flatten(1).any(1)
    if found.any():
        given = out[found]
        refined = crf_refine_logits(image, given, crf)
        out[found] = torch.where((refined > 0).flatten(1).any(1)[:, None, None], refined, given)
    return out


def crf_refined_result(result: SegmentResult, image: np.ndarray, crf: MaskCRF,
                       device: torch.device | str = "cpu") -> SegmentResult:
    """``result`` (with its logits) after ``crf_refine_found`` on the H x W x 3 ``image``, computed on ``device``
    (a model's, so that a GPU model's CRF runs on its GPU), its masks and scores recomputed from the refined logits."""
    if result.logits is None:
        raise ValueError("mask_crf refines a result's logits; this result has none")
    logits = crf_refine_found(image, torch.from_numpy(result.logits).to(device), crf)
    masks, scores = masks_and_scores(logits)
    return replace(result, masks=masks.cpu().numpy(), scores=scores.cpu().numpy(), logits=logits.cpu().numpy())
