"""LoRA on the LLM's attention (q_proj, v_proj), through peft, on the language model only.

Applying peft to the language model rather than to the whole LLaVA is what keeps the CLIP tower's own
q_proj/v_proj free of adapters (bare target names would match them too).
"""
from __future__ import annotations

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

__all__ = ["enable_lora", "merge_lora", "lora_enabled", "base_state_dict", "unwrapped"]


def unwrapped(module: nn.Module) -> nn.Module:
    """The model a PEFT wrapper wraps (its LoRA layers stay injected in it), or ``module`` itself."""
    return module.get_base_model() if isinstance(module, PeftModel) else module


def lora_enabled(model: nn.Module) -> bool:
    return isinstance(model.llava.model.language_model, PeftModel)


def enable_lora(model: nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.05,
                targets: tuple[str, ...] = ("q_proj", "v_proj")) -> None:
    """Wrap the model's language model in a peft LoRA adapter (in place)."""
    if lora_enabled(model):
        raise ValueError("LoRA is already enabled on this model")
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    model.llava.model.language_model = get_peft_model(model.llava.model.language_model, config)


def merge_lora(model: nn.Module) -> None:
    """Fold the LoRA weights into the base weights and drop the adapter (in place)."""
    if not lora_enabled(model):
        raise ValueError("LoRA is not enabled on this model; nothing to merge")
    model.llava.model.language_model = model.llava.model.language_model.merge_and_unload()


def base_state_dict(model: nn.Module) -> dict:
    """The model's state dict under the names it has without LoRA (adapter weights left out)."""
    state = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        state[key.replace("base_model.model.", "").replace(".base_layer.", ".")] = value
    return state
