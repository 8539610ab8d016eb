"""Prompt building: references and answers -> one token sequence with placeholders already expanded.

The paper's templates (anyref-paper.md):
  text     Q "Can you segment {exp} in this image?"                                    A "{exp} <obj>."
  example  Q "Can you find similar object of <img.ref>{feats}</img.ref> in this image?"  A "{class} <obj>."
  audio    Q "Can you segment the object(s) that produce sound of <aud.ref>{feats}</aud.ref> in this image?"
  caption  Q "Can you provide a description of <img.ref>{feats}</img.ref> in this image?" A the expression
  verify   Q "Is <img.ref>{feats}</img.ref> {exp} in this image?"                        A "yes." / "no."
  select   Q "Can you select {exp} in this image?" + every candidate as <mask-pool-pre>{feat}, A every candidate's
           {feat} once more (RAS's non-autoregressive group selection; a classifier reads those positions)
A list of references is read inline, left to right, as one expression: ["the object left of", Box(...)] asks
"Can you segment the object left of <img.ref>{feats}</img.ref> in this image?".

Feature placeholders are expanded here, the only place that knows how many tokens each reference takes; the model
checks the counts again when it scatters the features in.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from anyref.config import AnyRefConfig
from anyref.references import Audio, Box, ExampleImage, MaskRef, Reference
from anyref.samples import OBJ, AnswerPart
from anyref.tokens import SpecialTokenIds, encode_text

__all__ = ["EncodedPrompt", "PromptBuilder", "IGNORE_INDEX", "reference_kind"]

IGNORE_INDEX = -100

SEGMENT_TEMPLATES = {
    "text": "Can you segment {} in this image?",
    "example": "Can you find similar object of {} in this image?",
    "audio": "Can you segment the object(s) that produce sound of {} in this image?",
    "box": "Can you segment {} in this image?",
    "mask": "Can you segment {} in this image?",
}
DESCRIBE_TEMPLATE = "Can you provide a description of {} in this image?"
SELECT_TEMPLATE = "Can you select {} in this image?"
VERIFY_TEMPLATE = "Is {} in this image?"


def reference_kind(ref: Reference) -> str:
    """"text", "box", "example", "audio" or "mask"."""
    for kind, cls in (("text", str), ("box", Box), ("example", ExampleImage), ("audio", Audio), ("mask", MaskRef)):
        if isinstance(ref, cls):
            return kind
    raise TypeError(f"unsupported reference {type(ref).__name__}")


@dataclass
class EncodedPrompt:
    """One sample's token ids.

    input_ids: L ids, placeholders expanded (image patches, reference features).
    labels: L ids, IGNORE_INDEX outside the answer (teacher forcing targets, unshifted).
    answer_start: index of the first answer token (== L for a prompt to generate from).
    references: the non-text references in the order their feature tokens appear (candidates come after them).
    candidate_slots: positions of the answer's candidate tokens (task "select"), whose output states are classified.
    """

    input_ids: list[int]
    labels: list[int]
    answer_start: int
    references: list[Reference]
    candidate_slots: list[int]


class PromptBuilder:
    """Builds EncodedPrompts for one tokenizer and configuration."""

    def __init__(self, config: AnyRefConfig, tokenizer: PreTrainedTokenizerBase, ids: SpecialTokenIds,
                 image_tokens: int, image_wrap_ids: tuple[int, int] | None = None, mask_sources: dict | None = None):
        self.config = config
        self.tokenizer = tokenizer
        self.ids = ids
        self.image_tokens = image_tokens
        self.image_wrap_ids = image_wrap_ids
        self.mask_sources = mask_sources or {}  # name -> anyref.mask_tokens.MaskSource, for mask pooling weights

    def feature_count(self, ref: Reference) -> int:
        """Feature tokens a reference takes: the one place these counts are decided."""
        kind = reference_kind(ref)
        return {"box": self.config.region_tokens, "example": self.config.region_tokens,
                "audio": self.config.audio_tokens, "mask": 1}[kind]

    def _reference_ids(self, ref: Reference) -> list[int]:
        kind = reference_kind(ref)
        feats = [self.ids.ref_feature] * self.feature_count(ref)
        if kind in ("box", "example"):
            return [self.ids.img_ref_start, *feats, self.ids.img_ref_end]
        if kind == "audio":
            return [self.ids.aud_ref_start, *feats, self.ids.aud_ref_end]
        return [self.ids.mask_ref_pre, *feats]

    def question_parts(self, task: str, references: list[Reference]) -> tuple[list, list[Reference]]:
        """The question as parts (text strings and lists of special ids, template around the inline references)
        and its non-text references in order."""
        if task == "describe":
            template = DESCRIBE_TEMPLATE
        elif task == "select":
            template = SELECT_TEMPLATE
        elif task == "verify":
            template = VERIFY_TEMPLATE
        else:
            kinds = {reference_kind(r) for r in references}
            template = SEGMENT_TEMPLATES[kinds.pop()] if len(references) == 1 else SEGMENT_TEMPLATES["text"]
        before, after = template.split("{}")
        parts: list = [before]
        used: list[Reference] = []
        for index, ref in enumerate(references):
            sep = " " if index else ""
            if isinstance(ref, str):
                parts.append(sep + ref.strip())
            else:
                if sep:
                    parts.append(sep)
                parts.append(self._reference_ids(ref))
                used.append(ref)
        parts.append(after)
        return parts, used

    def encode_parts(self, parts: list) -> list[int]:
        """Text parts -> ids (no special-token parsing), id lists as they are. With ``join_prompt_text`` adjacent
        text parts are encoded by one tokenizer call; otherwise each part by its own."""
        ids: list[int] = []
        pending: list[str] = []

        def flush() -> None:
            if pending:
                ids.extend(self._encode_run("".join(pending)))
                pending.clear()

        for part in parts:
            if isinstance(part, str):
                if not part:
                    continue
                pending.append(part)
                if not self.config.join_prompt_text:
                    flush()
            else:
                flush()
                ids.extend(part)
        flush()
        return ids

    def _encode_run(self, text: str) -> list[int]:
        """One run of text between special ids -> ids, without special-token parsing; stripped at both ends with
        ``config.strip_special_whitespace``."""
        return encode_text(self.tokenizer, text.strip() if self.config.strip_special_whitespace else text)

    def answer_ids(self, answer: list[AnswerPart]) -> list[int]:
        """Answer parts -> ids (text encoded without special-token parsing, OBJ by id), then eos."""
        ids: list[int] = []
        text = " "  # the answer follows "ASSISTANT:" after one space
        for part in answer:
            if part is OBJ:
                if text:
                    ids += self._encode_run(text)
                    text = ""
                ids.append(self.ids.obj)
            elif isinstance(part, str):
                text += part
            else:
                raise TypeError(f"answer parts are str or OBJ, got {type(part).__name__}")
        if text.strip():
            ids += self._encode_run(text)
        return ids + [self.ids.eos]

    def image_block(self) -> list[int]:
        """The image's tokens as a prompt holds them (in LISA's wrap when configured): its first read, and with
        ``image_reread`` its second, after the answer, from which nothing is predicted."""
        image = [self.ids.image] * self.image_tokens
        return [self.image_wrap_ids[0], *image, self.image_wrap_ids[1]] if self.image_wrap_ids else image

    def encode(self, task: str, references: list[Reference], answer: list[AnswerPart] | None = None,
               candidates: int = 0) -> EncodedPrompt:
        """The whole sequence: [bos] system "USER: " image "\\n" question [candidates] " ASSISTANT:" answer
        [image again, with ``image_reread`` and an answer: :class:`anyref.image_reread.ImageReread`].

        The answer is the answer's tokens and eos (when given), or for task "select" the ``candidates`` feature
        tokens again (never predicted: their labels are ignored).
        """
        if (task == "select") != (candidates > 0):
            raise ValueError("task 'select' needs at least one candidate, and only it takes candidates")
        image = self.image_block()
        head = (self.config.system_prompt + " " if self.config.system_prompt else "") + "USER: "
        question, used = self.question_parts(task, references)
        listed = [self.ids.mask_pool_pre, self.ids.ref_feature] * candidates
        ids = [self.ids.bos] if self.ids.bos is not None else []
        # an empty id list would split the text around it into two tokenizer calls: leave it out
        ids += self.encode_parts([head, image, "\n", *question, *([listed] if listed else []), " ASSISTANT:"])
        answer_start = len(ids)
        labels = [IGNORE_INDEX] * answer_start
        slots = []
        if candidates:
            slots = list(range(answer_start, answer_start + candidates))
            ids += [self.ids.ref_feature] * candidates
            labels += [IGNORE_INDEX] * candidates
        elif answer is not None:
            answer_ids = self.answer_ids(answer)
            ids += answer_ids
            labels += answer_ids
        if self.config.image_reread != "off" and (candidates or answer is not None):
            ids += self.image_block()
            labels += [IGNORE_INDEX] * (len(ids) - len(labels))
        return EncodedPrompt(ids, labels, answer_start, used, slots)
