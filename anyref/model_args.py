"""What a command line may say about the model it runs: which model, on which device, and the inference settings
that override its config (``anyref eval``, ``anyref segment``, ...): one table, so every command offers the same
flags with the same meaning."""
from __future__ import annotations

import argparse

__all__ = ["add_inference_settings", "add_model_arguments", "apply_inference_settings", "inference_setting_words",
           "resolve_device", "load_model"]


def _on_off(text: str) -> bool:
    if text not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"give 'on' or 'off', got {text!r}")
    return text == "on"


def _number_or_off(example: str, kind: type = float):
    """An argparse type: a number of ``kind`` (float or int), or None for 'off'; ``example`` says what number is
    meant in the error."""
    def parse(text: str) -> float | int | None:
        if text == "off":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"give {example}, or 'off'; got {text!r}")
    return parse


def _crf_settings(text: str) -> dict | None:
    """An argparse type for --mask-crf: 'off' (None), 'on' (MaskCRF's defaults) or NAME=VALUE pairs joined by
    commas, e.g. 'iterations=10,radius=7'; checked by MaskCRF itself."""
    from anyref.mask_crf import MaskCRF

    if text == "off":
        return None
    settings, defaults = {}, MaskCRF()
    if text != "on":
        for pair in text.split(","):
            name, equals, value = pair.partition("=")
            name = name.strip()
            if not equals:
                raise argparse.ArgumentTypeError(f"give 'on', 'off' or NAME=VALUE pairs such as "
                                                 f"'iterations=10,radius=7'; got {text!r}")
            kind = type(getattr(defaults, name, 0.0))  # each setting's type is its default's; MaskCRF refuses unknowns
            try:
                settings[name] = kind(value)
            except ValueError:
                wanted = "an int" if kind is int else "a number"
                raise argparse.ArgumentTypeError(f"{name}={value!r} is not {wanted}") from None
    try:
        return MaskCRF.from_dict(settings).as_dict()
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _setting_word(value) -> str:
    """A parsed setting written as it parses back."""
    if isinstance(value, dict):
        return ",".join(f"{name}={number}" for name, number in value.items())
    return "off" if value is None or value is False else "on" if value is True else str(value)


# inference settings a command may override: (flag, the model's setter, argparse options); a flag not given leaves
# the model's config as it is
_INFERENCE_SETTINGS = (
    ("--mask-refinements", "set_mask_refinements",
     dict(type=int, metavar="K", help="redraw each mask K more times from its own coverage of the image-token grid "
                                      "(default: the model's config.mask_refinements)")),
    ("--mask-crf", "set_mask_crf",
     dict(type=_crf_settings, metavar="on|off|NAME=VALUE,...",
          help="snap each mask's edges to the image's with a local dense CRF: 'on' (anyref.mask_crf.MaskCRF's "
               "defaults), 'off', or settings such as 'iterations=10,radius=7,position_sigma=6,colour_sigma=15,"
               "weight=2' (default: the model's config.mask_crf)")),
    ("--describe-box-prior", "set_describe_box_prior",
     dict(type=_on_off, metavar="on|off",
          help="draw the region of a describe prompt's one box from the box itself, or from the <obj>'s own "
               "location map (default: the model's config.describe_box_prior)")),
    ("--describe-box-margin", "set_describe_box_margin",
     dict(type=_number_or_off("a fraction of the box's sides such as 0.05"), metavar="FRACTION|off",
          help="keep the mask of a describe prompt's one box within the box grown by FRACTION of its sides, or "
               "'off' (default: the model's config.describe_box_margin)")),
    ("--example-self-mask", "set_example_self_mask",
     dict(type=_on_off, metavar="on|off",
          help="mask an example image given without a mask by the model's own answer on it first, or not "
               "(default: the model's config.example_self_mask)")),
    ("--group-threshold", "set_group_threshold",
     dict(type=float, metavar="P", help="select's membership probability above which a candidate joins the group "
                                        "(default: the model's config.group_threshold)")),
    ("--group-empty-threshold", "set_group_empty_threshold",
     dict(type=_number_or_off("a probability such as 0.9"), metavar="P|off",
          help="select answers with an empty group unless some candidate's probability is over P; 'off': the "
               "membership threshold decides (default: the model's config.group_empty_threshold)")),
    ("--verify-answers", "set_verify_answers",
     dict(type=_number_or_off("a probability threshold such as 0.5"), metavar="THRESHOLD|off",
          help="check each mask answered to a text prompt by asking the model whether the mask's box is what the "
               "text describes, dropping it below THRESHOLD probability of yes, or 'off' (default: the model's "
               "config.verify_answers)")),
    ("--check-by-group-head", "set_check_by_group_head",
     dict(type=_number_or_off("a probability threshold such as 0.5"), metavar="THRESHOLD|off",
          help="check each mask answered to a text prompt with the model's text check head, or its group head "
               "when it has none (the text as a select prompt, the mask its one candidate), dropping it below "
               "THRESHOLD membership probability, or 'off' (default: the model's config.check_by_group_head)")),
    ("--rank-text-answers", "set_rank_text_answers",
     dict(type=_number_or_off("a probability threshold such as 0.9"), metavar="THRESHOLD|off",
          help="choose each one-<obj> answer to a text prompt again among the masks drawn at its location map's "
               "peaks, by the model's text rank head, answering no mask unless the best is over THRESHOLD, or "
               "'off' (default: the model's config.rank_text_answers)")),
    ("--rank-redraw-window", "set_rank_redraw_window",
     dict(type=_number_or_off("a number of cells such as 2", int), metavar="CELLS|off",
          help="draw the mask --rank-text-answers chose again with the location map kept within CELLS cells of its "
               "peak, keeping the redraw when it grows the mask, or 'off' (default: the model's "
               "config.rank_redraw_window)")),
    ("--verify-by-pixels", "set_verify_by_pixels",
     dict(type=_number_or_off("a probability threshold such as 0.5"), metavar="THRESHOLD|off",
          help="check each mask answered to a text prompt with the model's answer verifier, which reads the "
               "mask's own pixels, dropping it below THRESHOLD probability, or 'off' (default: the model's "
               "config.verify_by_pixels)")),
)


def add_inference_settings(parser: argparse.ArgumentParser) -> None:
    """The inference-setting flags of _INFERENCE_SETTINGS; one not given leaves the model's config as it is."""
    for flag, setter, options in _INFERENCE_SETTINGS:
        parser.add_argument(flag, dest=setter, default=argparse.SUPPRESS, **options)


def inference_setting_words(args: argparse.Namespace) -> list[str]:
    """The inference-setting flags the parsed arguments hold, written as they parse back ('on', 'off', numbers):
    for recording the command that reproduces a run."""
    words = []
    for flag, setter, _ in _INFERENCE_SETTINGS:
        if hasattr(args, setter):
            value = getattr(args, setter)
            words += [flag, _setting_word(value)]
    return words


def add_model_arguments(parser: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """--model (required unless ``default_model``), --device, --allow-untrained and the inference settings."""
    parser.add_argument("--model", required=default_model is None, default=default_model,
                        help="model directory (save_pretrained) or shipped model name"
                             + (f" (default {default_model})" if default_model else ""))
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="run reference kinds the model marks as untrained")
    add_inference_settings(parser)


def resolve_device(name: str | None) -> str:
    """The device a command runs on: the one named (checked before any model loads), else cuda when available,
    else cpu."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; give cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available()
                                  or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"--device {name}: {torch.cuda.device_count()} CUDA device(s) available here; "
                         "give cpu, or leave --device out to use cuda when there is one")
    return name


def load_model(args: argparse.Namespace):
    """``AnyRef.from_pretrained(args.model)`` on ``resolve_device(args.device)``, with the inference settings the
    parsed arguments hold applied (those of add_model_arguments)."""
    from anyref.api import AnyRef

    model = AnyRef.from_pretrained(args.model, device=resolve_device(args.device))
    apply_inference_settings(model, args)
    return model


def apply_inference_settings(model, args: argparse.Namespace) -> None:
    """Set on ``model`` each inference setting the parsed arguments hold (add_inference_settings'); the others
    stay as the model's config has them."""
    for _, setter, _ in _INFERENCE_SETTINGS:
        if hasattr(args, setter):
            getattr(model, setter)(getattr(args, setter))
