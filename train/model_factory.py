"""The model a training run starts from: a tiny AnyRef built from scratch, or an AnyRef directory."""
from __future__ import annotations

import torch

from anyref.api import AnyRef
from anyref.builders import build_tiny
from anyref.synthref import SynthRef

__all__ = ["build_model"]


def build_model(config) -> AnyRef:
    """config.model = {"tiny": {sizes, "refocus_lambda"...}} or {"init_from": DIR} (optionally with
    "new_group_head": {group_head_* config fields}: DIR's model with a new, untrained group head of that kind,
    and "add_nowhere": true: its location map with a new, untrained nowhere place, both initialised from the run's
    seed; "add_region_geometry": true: a new, zero region geometry code on its box and mask tokens,
    AnyRefConfig.region_geometry; "box_zoom": true: its box tokens read from each box's crop,
    AnyRefConfig.box_zoom; "add_image_reread": "added" or "alone": the image read again after the answer,
    its weights zero, AnyRefConfig.image_reread; "add_image_positions": true: a new, zero position map on its
    image tokens, AnyRefConfig.image_positions; "add_language_layers": N: N new LLM decoder layers before its last,
    each the identity at the start (AnyRefModel.add_language_layers); "group_by_obj": true: its ``select`` decides
    groups by an ``<obj>``, AnyRefConfig.group_by_obj, answered as "group_obj_answer" says:
    AnyRefConfig.group_obj_answer)."""
    if "init_from" in config.model:
        try:
            model = AnyRef.from_pretrained(config.model["init_from"])
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{error}. This config continues a finished model: train that one first (a "
                                    "preset's description names the run), or pass --init-from DIR") from error
        if "new_group_head" in config.model:
            torch.manual_seed(config.seed)
            model.replace_group_head(**config.model["new_group_head"])
        if config.model.get("add_nowhere"):
            torch.manual_seed(config.seed)
            model.add_nowhere()
        if config.model.get("box_zoom"):
            model.set_box_zoom(True)
        if config.model.get("add_region_geometry"):
            model.add_region_geometry()
        if config.model.get("add_image_reread"):
            model.add_image_reread(config.model["add_image_reread"])
        if config.model.get("add_image_positions"):
            model.add_image_positions()
        if config.model.get("add_language_layers"):
            model.add_language_layers(config.model["add_language_layers"])
        if config.model.get("group_by_obj"):
            model.decide_groups_by_obj(config.model.get("group_obj_answer", "given"))
        return model
    return build_tiny(corpus=SynthRef().vocabulary(), seed=config.seed, **config.model["tiny"])
