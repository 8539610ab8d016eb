"""Group heads: which candidate masks belong to the group a prompt asks for, from one forward pass (RAS).

- :class:`GroupHead` is RAS's binary classifier: an MLP on each candidate's last-layer state (optionally next to its
  own input mask token).
- :class:`PromptGroupHead` also compares each candidate with the prompt itself: the candidate (its state and mask
  token) attends over the prompt's positions (their states and input embeddings: the words, the ``MaskRef``
  token) and the classifier reads the candidate, what it attended to, and their product. Why it exists: in the
  tiny SynthRef model a candidate slot's last-layer state hardly depends on the prompt (docs/mask-groups.md), so
  RAS's head had nothing to compare; this head makes the comparison itself. The shipped synthref-tiny's group head
  is one, fitted alone on the finished model (``anyref fit-group-head``, train/group_head_fit.py).
- :class:`RelationGroupHead` adds a relation network (Santoro et al., 2017) over the candidates: each candidate is
  also compared with every other one, their place differences included, so "the square left of the blue star" can
  be read as a comparison of two candidates. The shipped model ranks its text answers with one
  (``AnyRefConfig.rank_text_answers``).
- :class:`GroupMapHead` asks where the group is instead: the state that has read the whole prompt maps the image
  tokens (one logit per token, as :class:`anyref.heads.ObjLocator` maps an ``<obj>``), and each candidate scores
  the mean of its cells' logits. The map can be supervised per cell (:func:`group_cell_loss`), a signal on every
  image token of every group sample, empty groups included.

:func:`group_loss` is RAS's loss: the mean over samples of each sample's mean weighted BCE over its candidates.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from anyref.candidate_crops import CROP_CHANNELS, CROP_SIDE
from anyref.heads import ObjLocator

__all__ = ["GroupHead", "PromptGroupHead", "RelationGroupHead", "GroupMapHead", "build_group_head", "group_loss",
           "group_cell_loss", "group_members", "pad_rows", "candidate_geometry", "GEOMETRY_INPUTS"]

GEOMETRY_INPUTS = 16  # candidate_geometry's width: the candidate's 5 numbers, the reference's 5, their difference, 1
# the geometry is fractions of the frame, and the differences that decide "left of" are about 0.1: scaled by 10 they
# sit at the unit scale of the layer-normed features beside them (unscaled, a head fitted on the shipped model did
# not learn the positional rules: val cIoU 0.35-0.40 on them against 0.99 scaled; docs/mask-groups.md)
GEOMETRY_SCALE = 10.0
PLACE_INPUTS = 5  # the first columns of candidate_geometry: the candidate's own centre, size and sqrt(area)


def candidate_geometry(candidates: torch.Tensor, reference: torch.Tensor | None) -> torch.Tensor:
    """C x GEOMETRY_INPUTS from the candidates' region geometry C x 5 and the prompt's (first) reference mask's 5
    (``anyref.region_geometry.mask_geometry``: centre x, y, width, height, sqrt(area), fractions of the frame), or
    None when the prompt has no mask: [candidate, reference, candidate - reference, has a reference], scaled."""
    candidates = candidates.float()
    if reference is None:
        relative = candidates.new_zeros((len(candidates), GEOMETRY_INPUTS - candidates.shape[1]))
    else:
        reference = reference.float().expand_as(candidates)
        relative = torch.cat([reference, candidates - reference, candidates.new_ones((len(candidates), 1))], dim=-1)
    return GEOMETRY_SCALE * torch.cat([candidates, relative], dim=-1)


def group_members(probabilities: np.ndarray, threshold: float, empty_threshold: float | None = None) -> np.ndarray:
    """N bool from N membership probabilities: the candidates over ``threshold``, or none at all when no candidate
    is over ``empty_threshold`` (None: ``threshold``, one threshold for both). Why two: a candidate wrongly added
    to a group costs part of its IoU, while any candidate added to an empty group makes the whole answer wrong (the
    "no target" answer of gRefCOCO's rules), so "is anything there?" may ask for more certainty than "this one
    too?" - the separate no-target decision of GRES models, here read from the same probabilities."""
    chosen = probabilities > threshold
    if empty_threshold is not None and not (probabilities > empty_threshold).any():
        chosen[:] = False
    return chosen


class GroupHead(nn.Module):
    """The binary classifier of RAS: Linear -> GELU -> Linear(1) on each candidate's output hidden state, or (with
    ``reads_token``) on that state concatenated with the candidate's own input mask token."""

    def __init__(self, hidden: int, reads_token: bool = False):
        super().__init__()
        self.reads_token = reads_token
        self.mlp = nn.Sequential(nn.Linear(hidden * (2 if reads_token else 1), hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, states: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """states: N x hidden; tokens: N x hidden, the candidates' mask tokens (needed with ``reads_token``).
        Returns N membership logits."""
        if self.reads_token:
            if tokens is None:
                raise ValueError("this group head reads the candidates' mask tokens: pass tokens")
            states = torch.cat([states, tokens.to(states.dtype)], dim=-1)
        return self.mlp(states).squeeze(-1)


class PromptGroupHead(nn.Module):
    """Membership logits from each candidate compared with its prompt.

    Candidate vectors are [last-layer state, mask token] (2H), prompt vectors [last-layer state, input embedding]
    (2H) at the prompt's positions; each is layer-normed (mask tokens are far larger than word embeddings). The
    candidate's query attends (``heads`` heads, width ``width``) over its own sample's prompt; the classifier,
    Linear -> GELU -> Linear(1), reads [c, a, c * a] with c the candidate's projection and a what it attended to:
    the product lets one layer test "has the asked attribute" or "matches the reference mask". With ``geometry``
    the classifier also reads where the candidate lies against the prompt's reference mask
    (:func:`candidate_geometry`): "left of" a mask is a comparison of two places, which the candidate's and the
    reference's tokens hold only in codes the head did not learn to compare.
    """

    def __init__(self, hidden: int, width: int = 64, heads: int = 4, geometry: bool = False):
        super().__init__()
        if width % heads:
            raise ValueError(f"group head width {width} must be a multiple of its heads {heads}")
        self.heads, self.geometry = heads, geometry
        self.candidate_norm, self.prompt_norm = nn.LayerNorm(2 * hidden), nn.LayerNorm(2 * hidden)
        self.query, self.candidate = nn.Linear(2 * hidden, width), nn.Linear(2 * hidden, width)
        self.key, self.value = nn.Linear(2 * hidden, width), nn.Linear(2 * hidden, width)
        inputs = 3 * width + (GEOMETRY_INPUTS if geometry else 0)
        self.mlp = nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, candidates: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor,
                geometry: torch.Tensor | None = None) -> torch.Tensor:
        """candidates: B x C x 2H; prompt: B x P x 2H; prompt_mask: B x P bool (True: a prompt position; every
        sample needs at least one); geometry: B x C x GEOMETRY_INPUTS (:func:`candidate_geometry`, needed with
        ``geometry``, ignored without). Returns B x C logits."""
        if not bool(prompt_mask.any(1).all()):
            raise ValueError("every sample needs at least one prompt position for the group head to attend to")
        if self.geometry and (geometry is None or geometry.shape[:2] != candidates.shape[:2]):
            raise ValueError("this group head reads the candidates' geometry: pass geometry B x C x "
                             f"{GEOMETRY_INPUTS} (candidate_geometry) for candidates {tuple(candidates.shape)}")
        return self.mlp(self.candidate_features(candidates, prompt, prompt_mask, geometry)).squeeze(-1)

    def candidate_features(self, candidates: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor,
                           geometry: torch.Tensor | None) -> torch.Tensor:
        """B x C x (3 width [+ GEOMETRY_INPUTS]): [c, a, c * a] and, with ``geometry``, the candidate's geometry."""
        batch, count, _ = candidates.shape
        c = self.candidate_norm(candidates)
        p = self.prompt_norm(prompt.to(c.dtype))

        def split(x: torch.Tensor) -> torch.Tensor:  # B x N x width -> B x heads x N x width/heads
            return x.view(batch, x.shape[1], self.heads, x.shape[2] // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(self.query(c)), split(self.key(p)), split(self.value(p)),
                                                  attn_mask=prompt_mask[:, None, None, :])
        attended = attended.transpose(1, 2).reshape(batch, count, self.value.out_features)
        own = self.candidate(c)
        features = [own, attended, own * attended] + ([geometry.to(own.dtype)] if self.geometry else [])
        return torch.cat(features, dim=-1)


class RelationGroupHead(PromptGroupHead):
    """A :class:`PromptGroupHead` whose candidates are also compared with each other: a relation network over
    candidate pairs.

    Each candidate's features - [c, a, c * a, geometry] as in :class:`PromptGroupHead` - become a vector u; every
    ordered pair (i, j) of one sample's candidates gives a message from [u_i, u_j, place_i - place_j] (the places of
    :func:`candidate_geometry`, scaled), and candidate i's logit reads u_i with the mean and the maximum of its
    messages. Why: "the square left of the blue star" is true of a candidate only by comparison with another one,
    the landmark; a head that scores each candidate alone sees the candidate's place but not the landmark's. On
    the tiny SynthRef model, fitted on the same cached inputs, a relational prompt's target was ranked first among
    the scene's objects 97% of the time against 87% for the head without the pairs (docs/training-experiments.md,
    "Text answers ranked among their location map's peaks").

    Padding: a sample's candidates are told apart from its padding by their geometry, which a real candidate always
    has (a candidate mask is never empty, so its sqrt(area) is above 0).

    With ``reads_pixels`` each candidate's crop (:func:`anyref.candidate_crops.candidate_crops`: its own pixels at
    CROP_SIDE x CROP_SIDE, and its mask) is encoded by a small CNN into k (``width``), and u also reads k and
    k * a (a: what the candidate attended to in the prompt): "is this crop the asked colour and shape?" in one layer.
    """

    def __init__(self, hidden: int, width: int = 64, heads: int = 4, dim: int = 64, reads_pixels: bool = False,
                 crop_dropout: float = 0.0):
        super().__init__(hidden, width, heads, geometry=True)
        del self.mlp  # the logit comes from self.out, after the pairs
        self.reads_pixels = reads_pixels
        self.crop_encoder = _crop_encoder(width) if reads_pixels else None
        # training only (no weights): drops crop features so that the head cannot lean on them alone
        self.crop_dropout = nn.Dropout(crop_dropout)
        unary_inputs = 3 * width + GEOMETRY_INPUTS + (2 * width if reads_pixels else 0)
        self.unary = nn.Sequential(nn.Linear(unary_inputs, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pair = nn.Sequential(nn.Linear(2 * dim + PLACE_INPUTS, dim), nn.GELU(), nn.Linear(dim, dim), nn.GELU())
        self.out = nn.Sequential(nn.Linear(3 * dim, dim), nn.GELU(), nn.Linear(dim, 1))

    def forward(self, candidates: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor,
                geometry: torch.Tensor | None = None, crops: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`PromptGroupHead.forward` (geometry needed): B x C logits. crops: B x C x CROP_CHANNELS x
        CROP_SIDE x CROP_SIDE (zero-padded; needed with ``reads_pixels``, ignored without)."""
        if geometry is None or geometry.shape[:2] != candidates.shape[:2]:
            raise ValueError("a relation group head compares the candidates' places: pass geometry B x C x "
                             f"{GEOMETRY_INPUTS} (candidate_geometry) for candidates {tuple(candidates.shape)}")
        count = candidates.shape[1]
        features = self.candidate_features(candidates, prompt, prompt_mask, geometry)
        if self.reads_pixels:
            if crops is None or crops.shape[:2] != candidates.shape[:2]:
                raise ValueError("this rank head reads the candidates' pixels: pass crops B x C x "
                                 f"{CROP_CHANNELS} x {CROP_SIDE} x {CROP_SIDE} (candidate_crops) for candidates "
                                 f"{tuple(candidates.shape)}")
            width = self.value.out_features
            k = self.crop_encoder(crops.flatten(0, 1).to(features.dtype)).view(*candidates.shape[:2], width)
            k = self.crop_dropout(k)
            attended = features[..., width:2 * width]
            features = torch.cat([features, k, k * attended], dim=-1)
        u = self.unary(features)  # B x C x dim
        places = geometry[..., :PLACE_INPUTS].to(u.dtype)
        pairs = self.pair(torch.cat([u[:, :, None].expand(-1, -1, count, -1), u[:, None].expand(-1, count, -1, -1),
                                     places[:, :, None] - places[:, None]], dim=-1))  # B x C x C x dim
        real = geometry.abs().sum(-1) > 0
        others = real[:, None, :] & ~torch.eye(count, dtype=torch.bool, device=u.device)[None]  # B x C x C
        weights = others.to(u.dtype)[..., None]
        mean = (pairs * weights).sum(2) / weights.sum(2).clamp(min=1.0)
        largest = pairs.masked_fill(~others[..., None], torch.finfo(u.dtype).min).amax(2)
        largest = torch.where(others.any(2, keepdim=True), largest, torch.zeros_like(largest))  # a lone candidate
        return self.out(torch.cat([u, mean, largest], dim=-1)).squeeze(-1)


def _crop_encoder(width: int) -> nn.Module:
    """CROP_CHANNELS x CROP_SIDE x CROP_SIDE crops -> ``width``: two 3 x 3 convolutions, each halving the side."""
    side = CROP_SIDE // 4
    return nn.Sequential(nn.Conv2d(CROP_CHANNELS, 16, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.GELU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(32 * side * side, width))


class GroupMapHead(nn.Module):
    """Membership from a map of the group over the image tokens.

    ``cells`` scores every image token the LLM read against a query from one state per sample (the last prompt
    position, which has read the question and every candidate): N x T logits, "is this cell in the group?", with a
    learned bias so that an empty group can be all "no". ``forward`` gives each candidate the mean of its sample's
    cell logits weighted by the share of the candidate each cell holds. Why: in the tiny SynthRef model a candidate
    slot's state hardly depends on the prompt (docs/mask-groups.md), while an ``<obj>``'s map over the same image
    tokens finds the right object (anyref.heads.ObjLocator); this head asks the LLM the same kind of question.
    """

    def __init__(self, hidden: int, dim: int = 64):
        super().__init__()
        self.locator = ObjLocator(hidden, dim)
        self.bias = nn.Parameter(torch.zeros(1))  # not 0-d: DeepSpeed broadcasts parameters as byte views

    def cells(self, query_states: torch.Tensor, image_states: torch.Tensor) -> torch.Tensor:
        """query_states: S x H (one per sample); image_states: S x T x H, the sample's image tokens -> S x T."""
        return self.locator(query_states, image_states) + self.bias

    @staticmethod
    def forward(cell_logits: torch.Tensor, coverage: torch.Tensor, owners: torch.Tensor) -> torch.Tensor:
        """cell_logits: S x T; coverage: N x T, the share of each cell each candidate covers; owners: N, each
        candidate's row of cell_logits. Returns N membership logits."""
        weights = coverage / coverage.sum(1, keepdim=True).clamp_min(1e-6)
        return (weights.to(cell_logits.dtype) * cell_logits[owners]).sum(1)


def build_group_head(config, hidden: int) -> nn.Module:
    """The group head an ``AnyRefConfig`` asks for, for an LLM of width ``hidden``."""
    if config.group_head_maps_image:
        return GroupMapHead(hidden)
    if config.group_head_attends_prompt:
        return PromptGroupHead(hidden, geometry=config.group_head_reads_geometry)
    return GroupHead(hidden, config.group_head_reads_token)


def pad_rows(values: torch.Tensor, chosen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chosen positions of each row, left-aligned and zero-padded: values B x L x D, chosen B x L bool ->
    (B x N x D, B x N bool), N the most any row has; row b's chosen positions in their order."""
    counts = chosen.sum(1)
    width = int(counts.max()) if len(counts) else 0
    out = values.new_zeros((values.shape[0], width, values.shape[2]))
    mask = torch.arange(width, device=values.device)[None, :] < counts[:, None]
    out[mask] = values[chosen]
    return out, mask


def group_loss(logits: torch.Tensor, targets: torch.Tensor, owners: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Mean over samples of each sample's mean BCE over its candidates (positives weighted ``pos_weight``).

    logits, targets: N (all candidates of the batch); owners: N sample indices. Returns a scalar (0 without
    candidates, still in the graph).
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    weight = torch.tensor(pos_weight, dtype=torch.float32, device=logits.device)
    per = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight, reduction="none")
    counts = torch.zeros(int(owners.max()) + 1, device=logits.device).index_add_(0, owners, torch.ones_like(per))
    sums = torch.zeros_like(counts).index_add_(0, owners, per)
    present = counts > 0
    return (sums[present] / counts[present]).mean()


def group_cell_loss(cell_logits: torch.Tensor, coverage: torch.Tensor, owners: torch.Tensor,
                    selected: torch.Tensor) -> torch.Tensor:
    """Per-cell BCE of a group map against the group's cover: mean over samples of the mean over cells.

    cell_logits: S x T; coverage: N x T (each candidate's share of each cell); owners: N (rows of cell_logits);
    selected: N bool. A cell's target is the share of it the group's members cover (capped at 1), so an empty
    group's target is 0 everywhere. Returns a scalar (0 without samples, still in the graph).
    """
    if cell_logits.numel() == 0:
        return cell_logits.sum() * 0.0
    members = coverage.float() * selected.float()[:, None]
    cover = torch.zeros_like(cell_logits, dtype=torch.float32).index_add_(0, owners, members).clamp_max(1.0)
    return F.binary_cross_entropy_with_logits(cell_logits.float(), cover)
