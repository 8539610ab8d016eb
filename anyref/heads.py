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


def decode_masks(sam: Sam, image_embeddings: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Low-resolution mask logits for N prompts, as SAM's mask decoder gives them with ``multimask_output=False``.

    image_embeddings: 1 x C x g x g (every prompt on one image) or N x C x g x g (prompt i on image i: a whole
    training batch in one call); prompts: N x C (gamma outputs: one token each) or N x T x C (T tokens each, e.g.
    SAM's prompt encoder's box corners) used as the sparse prompt, the dense prompt being SAM's no-mask embedding.
    Returns N x 1 x 4g x 4g.

    SAM's ``MaskDecoder.forward`` repeats ONE image embedding for all its prompts; for prompts on different images
    this runs the same modules (its two-way transformer, upscaling and first hypernetwork MLP) on one embedding per
    prompt. tests/test_heads.py checks it equals ``MaskDecoder.forward`` prompt by prompt.
    """
    decoder = sam.mask_decoder
    count = prompts.shape[0]
    dtype = image_embeddings.dtype
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).to(dtype)
    src = image_embeddings.expand(count, -1, -1, -1) + dense
    positions = sam.prompt_encoder.get_dense_pe().to(dtype).expand(count, -1, -1, -1)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight]).to(dtype)
    sparse = prompts[:, None, :] if prompts.dim() == 2 else prompts
    tokens = torch.cat([output_tokens[None].expand(count, -1, -1), sparse.to(dtype)], dim=1)
    batch, channels, height, width = src.shape
    states, src = decoder.transformer(src, positions, tokens)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(batch, channels, height, width))
    # the single-mask output is mask token 0 (the first after the IoU token)
    weights = decoder.output_hypernetworks_mlps[0](states[:, 1])  # N x C'
    return torch.einsum("nc,nchw->nhw", weights, upscaled)[:, None]


def upscale_masks(sam: Sam, low_res: torch.Tensor, sam_size: tuple[int, int], image_size: tuple[int, int]):
    """N x 1 x h x w low-res logits -> N x H x W logits at the original image size (SAM's postprocessing:
    bilinear to the SAM input, crop the padding, bilinear to the original)."""
    return sam.postprocess_masks(low_res, sam_size, image_size)[:, 0]
