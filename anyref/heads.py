"""From an ``<obj>`` state to a mask: gamma (an MLP into SAM's prompt space) and SAM's own mask decoder."""
from __future__ import annotations

import torch
from segment_anything.modeling import Sam
from torch import nn

__all__ = ["ObjProjection", "decode_masks", "upscale_masks"]


class ObjProjection(nn.Sequential):
    """gamma: Linear(H, H) -> ReLU -> Linear(H, prompt_dim), as LISA's text_hidden_fcs (prompt_dim 256 for SAM)."""

    def __init__(self, hidden: int, prompt_dim: int):
        super().__init__(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, prompt_dim))


def decode_masks(sam: Sam, image_embedding: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Low-resolution mask logits for N prompts on one image.

    image_embedding: 1 x C x g x g (SAM image encoder output); prompts: N x C (gamma outputs) used as the sparse
    prompt, the dense prompt being SAM's no-mask embedding; single-mask output. Returns N x 1 x 4g x 4g.
    """
    count = prompts.shape[0]
    grid = image_embedding.shape[-2:]
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(count, -1, *grid)
    low_res, _ = sam.mask_decoder(
        image_embeddings=image_embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=prompts[:, None, :].to(image_embedding.dtype),
        dense_prompt_embeddings=dense.to(image_embedding.dtype),
        multimask_output=False,
    )
    return low_res


def upscale_masks(sam: Sam, low_res: torch.Tensor, sam_size: tuple[int, int], image_size: tuple[int, int]):
    """N x 1 x h x w low-res logits -> N x H x W logits at the original image size (SAM's postprocessing:
    bilinear to the SAM input, crop the padding, bilinear to the original)."""
    return sam.postprocess_masks(low_res, sam_size, image_size)[:, 0]
