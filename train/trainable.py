"""The one place that decides what trains: parameter groups by module handle, and the policy of each stage."""
from __future__ import annotations

from torch import nn

from anyref.group_heads import GroupHead

__all__ = ["parameter_groups", "POLICIES", "apply_policies", "follow_stage", "describe_groups"]

# policy -> groups it trains (see train.config.Stage)
POLICIES = {
    "paper": ("lora", "token_rows", "mask_decoder", "heads", "group_head", "mask_projector"),
    "heads": ("mask_decoder", "heads", "group_head", "mask_projector"),
    "all": ("lora", "token_rows", "llm", "new_parts", "vision", "vision_projector", "sam_encoder", "mask_decoder",
            "heads", "group_head", "mask_projector", "audio_encoder", "pointer_heads", "cell_heads"),
    "encoders": ("vision", "sam_encoder", "audio_encoder", "warmup_heads"),
    # the same plus SAM's mask decoder, for a warm-up that also trains SAM on box prompts (sam_prompt_weight)
    "encoders_promptable": ("vision", "sam_encoder", "mask_decoder", "audio_encoder", "warmup_heads"),
    # RAS's two stages: the mask projector alone (captioning from mask tokens), then all but the encoders
    "mask_projector": ("mask_projector",),
    "all_but_encoders": ("lora", "token_rows", "llm", "new_parts", "vision_projector", "mask_decoder", "heads",
                         "group_head", "mask_projector"),
    # a prompt-attending group head alone, on a model whose other parts are finished
    "group_head": ("group_head",),
}


def parameter_groups(model: nn.Module, trainer_heads: dict[str, list[nn.Module]] | None = None
                     ) -> dict[str, list[nn.Parameter]]:
    """Every parameter of an AnyRef model (and of the trainer-only heads, group -> modules) in exactly one named
    group, chosen by module handles."""
    llava = model.llava
    # a group head of a newer kind (prompt-attending, image map) is a group of its own, so that a stage can train it
    # alone; RAS's head stays among the heads, so runs with it keep their optimizer layout (and checkpoints load)
    own_group = type(model.group_head) is not GroupHead
    handles = {
        "token_rows": [llava.get_input_embeddings(), llava.lm_head],
        "vision": [llava.model.vision_tower],
        "vision_projector": [llava.model.multi_modal_projector],
        "sam_encoder": [model.sam.image_encoder, model.sam.prompt_encoder],
        "mask_decoder": [model.sam.mask_decoder],
        # the image-token merger, position map, locator and region geometry are new on a pretrained LLaVA too: they
        # train with the heads (a position map added in this run is among the new parts instead)
        "heads": [m for m in (model.obj_projection, model.audio_projection, None if own_group else model.group_head,
                              model.image_merger, model.image_positions, model.obj_locator, model.region_geometry,
                              model.image_reread)
                  if m is not None and m not in model.new_parts],
        "group_head": [model.group_head] if own_group else [],
        # parts added to a finished model in this run that start as a no-op (new LLM layers, an added position
        # map): a group of their own, so that a stage can give them a learning rate of their own
        # (Stage.new_layers_lr); empty otherwise, so other runs' layouts are unchanged
        "new_parts": list(model.new_parts),
        "mask_projector": [model.mask_projector],
        "audio_encoder": [model.audio_encoder] if model.audio_encoder is not None else [],
        "mask_encoders": [model.mask_encoders],
        **{name: list(modules) for name, modules in (trainer_heads or {}).items()},
    }
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in (*handles, "lora", "llm")}
    seen: set[int] = set()
    for name, modules in handles.items():
        for module in modules:
            for param in module.parameters():
                if id(param) not in seen:
                    seen.add(id(param))
                    groups[name].append(param)
    for name, param in model.named_parameters():  # what no handle holds: LoRA, the decoder stack
        if id(param) in seen:
            continue
        seen.add(id(param))
        if ".lora_" in name:
            groups["lora"].append(param)
        elif name == "refocus_lambda":
            groups["heads"].append(param)
        else:
            groups["llm"].append(param)
    return groups


def apply_policies(model: nn.Module, policies: set[str], trainer_heads: dict[str, list[nn.Module]] | None = None
                   ) -> dict[str, list[nn.Parameter]]:
    """Set requires_grad to the union of the given policies' groups; returns only the groups that train."""
    wanted = {group for policy in policies for group in POLICIES[policy]}
    groups = parameter_groups(model, trainer_heads)
    for policy in policies:
        if not any(groups[name] for name in POLICIES[policy] if name in groups):
            raise ValueError(f"stage policy {policy!r} trains no parameter of this model (its groups "
                             f"{POLICIES[policy]} are empty; 'group_head' needs a group head other than RAS's)")
    for name, params in groups.items():
        for param in params:
            param.requires_grad_(name in wanted)
    return {name: params for name, params in groups.items() if name in wanted and params}


def follow_stage(groups: dict[str, list[nn.Parameter]], policy: str | None) -> None:
    """Let only the groups ``policy`` trains take gradients, of ``groups`` (what :func:`apply_policies` returned for
    every stage of a run); None: all of them again (for export, which reads the trained parameters' masters). A stage
    also keeps the other groups' learning rate at 0 (train.loop.lr_multipliers); without their gradients it skips
    their backward pass too - a frozen encoder in a later stage costs no backward, as in a run of its own - and
    leaves them out of the gradient-clipping norm."""
    trained = set(POLICIES[policy]) if policy is not None else set(groups)
    for name, params in groups.items():
        for param in params:
            param.requires_grad_(name in trained)


def describe_groups(model: nn.Module, trainer_heads: dict[str, list[nn.Module]] | None = None) -> str:
    """A table of parameter counts per group, trainable or frozen, for the training log."""
    groups = parameter_groups(model, trainer_heads)
    total = sum(p.numel() for params in groups.values() for p in params)
    lines = [f"{'group':<14}{'params':>14}{'trainable':>14}"]
    trainable_total = 0
    for name, params in groups.items():
        count = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        trainable_total += trainable
        lines.append(f"{name:<14}{count:>14,}{trainable:>14,}")
    lines.append(f"{'total':<14}{total:>14,}{trainable_total:>14,}  ({100 * trainable_total / max(total, 1):.1f}% "
                 "trainable)")
    return "\n".join(lines)
