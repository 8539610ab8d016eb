"""Special tokens, and the only way text becomes token ids.

Every special token is inserted by id, never parsed out of text: user and dataset text is always encoded with
``split_special_tokens=True``, so a literal "<obj>" typed by a user stays plain text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = [
    "SPECIAL_TOKENS", "IMAGE_WRAP_TOKENS", "SpecialTokenIds", "add_special_tokens", "special_token_ids",
    "check_not_typed", "encode_text", "build_tiny_tokenizer",
]

# name -> default token text. "obj" is the mask token (LISA checkpoints use "[SEG]" for it, see AnyRefConfig).
SPECIAL_TOKENS = {
    "image": "<image>",             # one per vision patch, replaced by the projected patch features
    "obj": "<obj>",                 # emitted by the model; its hidden state becomes a mask prompt
    "img_ref_start": "<img.ref>",   # quotes box / example-image feature tokens
    "img_ref_end": "</img.ref>",
    "aud_ref_start": "<aud.ref>",   # quotes audio feature tokens
    "aud_ref_end": "</aud.ref>",
    "ref_feature": "<ref.feat>",    # placeholder, one per reference feature token, replaced before the LLM runs
    "mask_ref_pre": "<mask-ref-pre>",    # precedes a reference mask's token (RAS)
    "mask_pool_pre": "<mask-pool-pre>",  # precedes a candidate mask's token (RAS)
}
# LISA's tokens around the image's tokens, for models with config.image_wrap (converted LISA checkpoints)
IMAGE_WRAP_TOKENS = {"start": "<im_start>", "end": "<im_end>"}


@dataclass(frozen=True)
class SpecialTokenIds:
    """Ids of the special tokens in one tokenizer (plus bos/eos/pad)."""

    image: int
    obj: int
    img_ref_start: int
    img_ref_end: int
    aud_ref_start: int
    aud_ref_end: int
    ref_feature: int
    mask_ref_pre: int
    mask_pool_pre: int
    bos: int | None
    eos: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, texts: dict[str, str]) -> "SpecialTokenIds":
        """Ids for ``texts`` (name -> token text), checked by :func:`special_token_ids`."""
        ids = special_token_ids(tokenizer, texts, "AnyRef")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos token")
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return cls(**ids, bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=pad)


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, texts: dict[str, str]) -> int:
    """Add the special tokens (name -> text) that the tokenizer lacks; returns how many were added.

    Then checks each encodes to exactly ONE id in context (LISA users met a tokenizer that split ``[SEG]`` into a
    space piece plus the token, and got doubled masks).
    """
    missing = [t for t in texts.values() if t not in tokenizer.get_vocab()]
    added = tokenizer.add_special_tokens({"additional_special_tokens": missing}) if missing else 0
    # a checkpoint may ship one as a plain added token, which typed text would still produce: make it special
    plain = [t for t in texts.values() if t not in missing and _typed(tokenizer, t)]
    if plain:
        tokenizer.add_special_tokens({"additional_special_tokens": plain}, replace_extra_special_tokens=False)
    check_single_ids(tokenizer, texts.values())
    check_not_typed(tokenizer, texts.values())
    return added


def special_token_ids(tokenizer: PreTrainedTokenizerBase, texts: dict[str, str], needed_by: str) -> dict[str, int]:
    """name -> id of each token text in ``texts`` (name -> text), for a model about to use them.

    Raises, naming the tokens, when one is not a known token of ``tokenizer`` or when typed text still produces
    one (a tokenizer saved with the token as a plain added token: a user typing "<obj>" would get a mask token).
    needed_by: what needs the tokens, for the message (e.g. "config.image_wrap").
    """
    ids = {name: tokenizer.convert_tokens_to_ids(text) for name, text in texts.items()}
    missing = [texts[name] for name, token_id in ids.items()
               if token_id is None or token_id == tokenizer.unk_token_id]
    if missing:
        raise ValueError(f"the tokenizer lacks the tokens {missing} that {needed_by} needs; add them with "
                         "anyref.tokens.add_special_tokens (and resize the LLM's embeddings) before building the model")
    check_not_typed(tokenizer, texts.values())
    return ids


def check_not_typed(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> None:
    """Raise unless every token text is special: typed (user or dataset) text must never produce its id."""
    injectable = [text for text in texts if _typed(tokenizer, text)]
    if injectable:
        raise ValueError(f"typed text still produces the special tokens {injectable}: the tokenizer holds them as "
                         'plain tokens. Mark them special ("special": true in tokenizer.json\'s added_tokens), or '
                         "pass the tokenizer through anyref.tokens.add_special_tokens and save it again")


def _typed(tokenizer: PreTrainedTokenizerBase, text: str) -> bool:
    """Whether user text holding ``text`` encodes to that token's id (it must not: no injection)."""
    return tokenizer.convert_tokens_to_ids(text) in encode_text(tokenizer, f"a {text} b")


def check_single_ids(tokenizer: PreTrainedTokenizerBase, texts: Iterable[str]) -> None:
    """Raise unless every token text encodes to one id, alone and inside a sentence."""
    for text in texts:
        token_id = tokenizer.convert_tokens_to_ids(text)
        for context in (text, f"the red circle {text}.", f"a{text}b"):
            ids = tokenizer(context, add_special_tokens=False).input_ids
            if ids.count(token_id) != 1:
                raise ValueError(f"special token {text!r} does not encode to one id in {context!r}: {ids}")


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of plain text. Special-token strings inside ``text`` are NOT recognised (no injection)."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=True).input_ids


_WORD = re.compile(r"\w+|[^\w\s]")
_WORD_REPEATS = 20  # enough that BPE merges every corpus word, alone and after a space, into one token


def build_tiny_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``corpus`` (any text stays encodable: unknown words fall back to bytes),
    with bos/eos/pad and AnyRef's special tokens. Deterministic for the same corpus.

    Every word of the corpus becomes ONE token, both alone ("red") and after a space (" red", BPE's "Ġred"):
    trained on the texts alone, BPE splits rare words into pieces that differ with their context ("Ġs ma ll" in one
    place, "small" in another), and a tiny model then cannot copy an expression into its answer or name a
    colour it sees (measured: captions stuck near chance on colour)."""
    texts = list(corpus)
    words = sorted({word for text in texts for word in _WORD.findall(text)})
    training = [prefix + word for word in words for prefix in ("", " ")] * _WORD_REPEATS + texts
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model.train_from_iterator(training, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=model, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    add_special_tokens(tokenizer, SPECIAL_TOKENS)
    return tokenizer
