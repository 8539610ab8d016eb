"""From an ``<obj>`` state to a mask: gamma (an MLP into SAM's prompt space) and SAM's own mask decoder; optionally
a location map of the ``<obj>`` over the image tokens, given to SAM as its dense (mask) prompt."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

__all__ = ["ObjProjection", "ObjLocator", "location_logits", "location_prompt", "nowhere_share", "placed_nowhere",
           "location_cells", "map_peaks", "peak_windows",
           "coverage_logits", "decode_masks", "upscale_masks"]

class ObjProjection(nn.Sequential):
    """gamma: Linear(H, H) -> ReLU -> Linear(H, prompt_dim), as LISA's text_hidden_fcs (prompt_dim 256 for SAM)."""

    def __init__(self, hidden: int, prompt_dim: int):
        super().__init__(nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, prompt_dim))


class ObjLocator(nn.Module):
    """Where an ``<obj>`` is: scaled dot products of a query from its state with keys from the last-layer states of
    the image tokens the LLM read, one logit per token of its grid.

    Not in the paper: a from-scratch tiny LLM places its masks roughly (docs/training-experiments.md), and this map,
    given to SAM as a dense prompt (:func:`location_prompt`), lets the mask loss reach the image tokens' states
    through a spatial path and not only through one ``<obj>`` vector. The trainer's pointer loss supervises the same
    logits.

    With ``nowhere`` the map has one more place, "nowhere": a logit from the query alone (its dot product with a
    learned key, plus a bias), competing with the cells in the same softmax. An ``<obj>`` whose target is absent is
    taught to point there, so that "is the described object here?" becomes the locator's own comparison - the best
    cell's match against a learned bar - rather than a decision of the first answer token (ReLA's no-target head
    plays this part for GRES).
    """

    def __init__(self, hidden: int, dim: int = 64, nowhere: bool = False):
        super().__init__()
        self.query, self.key = nn.Linear(hidden, dim), nn.Linear(hidden, dim)
        self.nowhere = nn.Linear(dim, 1) if nowhere else None

    def forward(self, obj_states: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """obj_states N x H, image_states N x T x H (the image tokens of each ``<obj>``'s own row) -> N x T, or
        N x (T + 1) with the nowhere logit last."""
        queries = self.query(obj_states)
        cells = location_logits(queries, self.key(image_states))
        if self.nowhere is None:
            return cells
        return torch.cat([cells, self.nowhere(queries) / math.sqrt(queries.shape[-1])], dim=-1)


def nowhere_share(locations: torch.Tensor) -> torch.Tensor:
    """N from N x (T + 1) location logits (nowhere last): the share of the map's probability on the nowhere place."""
    return locations.float().softmax(-1)[:, -1]


def placed_nowhere(locations: torch.Tensor) -> torch.Tensor:
    """N bool from N x (T + 1) location logits (nowhere last): the nowhere place holds more than half the map."""
    return nowhere_share(locations) > 0.5


def location_cells(locations: torch.Tensor, cells: int) -> torch.Tensor:
    """N x T cell logits from N x T or N x (T + 1) location logits: the map without its nowhere place, if any."""
    return locations[:, :cells]


def location_logits(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Scaled dot products: queries N x d, keys N x T x d -> N x T."""
    return torch.einsum("nd,ntd->nt", queries, keys) / math.sqrt(queries.shape[-1])


def coverage_logits(masks: torch.Tensor, grid: int, floor: float = 1e-3) -> torch.Tensor:
    """N x grid^2 location logits of N H x W masks (bool or 0/1) over a grid x grid token grid covering the whole
    image: log(share of each cell the mask covers + floor). The map a perfect locator would give: the pointer loss
    trains the map towards these shares, normalised."""
    covered = F.adaptive_avg_pool2d(masks.float()[:, None], grid).flatten(1)
    return torch.log(covered + floor)


def map_peaks(cells: torch.Tensor, count: int, spacing: int) -> list[tuple[int, int]]:
    """The (row, column) of up to ``count`` highest cells of a G x G map, greedily, each at least ``spacing`` cells
    from those before it (Chebyshev distance), highest first."""
    if count < 1 or spacing < 1:
        raise ValueError(f"need at least one peak and a spacing of at least one cell, got {count} and {spacing}")
    side = cells.shape[-1]
    peaks: list[tuple[int, int]] = []
    for index in cells.flatten().argsort(descending=True).tolist():
        row, col = divmod(index, side)
        if all(max(abs(row - r), abs(col - c)) >= spacing for r, c in peaks):
            peaks.append((row, col))
            if len(peaks) == count:
                break
    return peaks


def peak_windows(cells: torch.Tensor, peaks: list[tuple[int, int]], floor: float = -30.0,
                 half_width: int = 1) -> torch.Tensor:
    """K x G^2 location logits: the G x G map ``cells`` kept within the (2 half_width + 1)^2 cells around each peak
    (3 x 3 by default), ``floor`` (nowhere, after the prompt's softmax) elsewhere."""
    windows = cells.new_full((len(peaks), *cells.shape), floor)
    for k, (row, col) in enumerate(peaks):
        rows = slice(max(0, row - half_width), row + half_width + 1)
        cols = slice(max(0, col - half_width), col + half_width + 1)
        windows[k, rows, cols] = cells[rows, cols]
    return windows.flatten(1)


def location_prompt(sam: Sam, location_logits: torch.Tensor) -> torch.Tensor:
    """SAM's dense prompt from location logits N x G^2 over a G x G token grid: N x C x g x g.

    The map, as log-probabilities relative to a uniform one (so 0 means "no more likely than anywhere"), is resized
    to the mask-input size SAM's prompt encoder expects (4g) and embedded by that encoder as it embeds a mask.
    """
    count, tokens = location_logits.shape
    side = math.isqrt(tokens)
    if side * side != tokens:
        raise ValueError(f"location logits must cover a square grid, got {tokens} tokens")
    relative = location_logits.float().log_softmax(-1) + math.log(tokens)
    maps = F.interpolate(relative.view(count, 1, side, side), size=sam.prompt_encoder.mask_input_size,
                         mode="bilinear", align_corners=False)
    _, dense = sam.prompt_encoder(points=None, boxes=None, masks=maps.to(location_logits.dtype))
    return dense


def dense_positions(sam: Sam) -> torch.Tensor:
    """SAM's dense positional encoding, 1 x C x h x w float32, whatever dtype the model was cast to.

    segment-anything multiplies a float32 coordinate grid by its random Fourier matrix, a buffer that
    ``model.to(torch.bfloat16)`` casts too, and the matmul then refuses the mixed dtypes: the matrix is lent back in
    float32 for the call."""
    encoder = sam.prompt_encoder.pe_layer
    matrix = encoder.positional_encoding_gaussian_matrix
    if matrix.dtype == torch.float32:
        return sam.prompt_encoder.get_dense_pe()
    encoder.positional_encoding_gaussian_matrix = matrix.float()
    try:
        return sam.prompt_encoder.get_dense_pe()
    finally:
        encoder.positional_encoding_gaussian_matrix = matrix


def decode_masks(sam: Sam, image_embeddings: torch.Tensor, prompts: torch.Tensor,
                 dense: torch.Tensor | None = None) -> torch.Tensor:
    """Low-resolution mask logits for N prompts, as SAM's mask decoder gives them with ``multimask_output=False``.

    image_embeddings: 1 x C x g x g (every prompt on one image) or N x C x g x g (prompt i on image i: a whole
    training batch in one call); prompts: N x C (gamma outputs: one token each) or N x T x C (T tokens each, e.g.
    SAM's prompt encoder's box corners) used as the sparse prompt; dense: N x C x g x g dense prompts
    (:func:`location_prompt`), or None for SAM's no-mask embedding. Returns N x 1 x 4g x 4g.

    SAM's ``MaskDecoder.forward`` repeats ONE image embedding for all its prompts; for prompts on different images
    this runs the same modules (its two-way transformer, upscaling and first hypernetwork MLP) on one embedding per
    prompt. tests/test_heads.py checks it equals ``MaskDecoder.forward`` prompt by prompt.
    """
    decoder = sam.mask_decoder
    count = prompts.shape[0]
    dtype = image_embeddings.dtype
    if dense is None:
        dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    dense = dense.to(dtype)
    src = image_embeddings.expand(count, -1, -1, -1) + dense
    positions = dense_positions(sam).to(dtype).expand(count, -1, -1, -1)
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
