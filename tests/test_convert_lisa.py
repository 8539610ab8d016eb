"""``anyref convert lisa``: a tiny checkpoint in LISA's released format, converted and checked against the source.

The fixture writes what the LISA releases hold, at test size: config.json (LISAForCausalLM), a sentencepiece
tokenizer.model with LISA's added_tokens.json (7B and 13B id layouts), a wrong generation_config.json, pickled
``pytorch_model-0000k-of-00003.bin`` shards with their index, bf16 LLaMA + projector, fp32 SAM + projection,
inv_freq buffers; and an HF CLIP directory (LISA ships none). The references below compute LISA's forward from the
source tensors by hand: their own LLaMA, CLIP features through LISA's single Linear, text_hidden_fcs, and SAM's
prompt encoder + mask decoder fed the way LISA feeds them.
"""
from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig, CLIPVisionModel

from anyref import OBJ, AnyRef, Box, ReferringSample
from anyref.batching import collate, prepare
from anyref.builders import LLAVA_V1_SYSTEM
from anyref.convert import convert_lisa, main
from anyref.convert import lisa as lisa_module
from anyref.tokens import SPECIAL_TOKENS, encode_text
from encoders.checkpoints import CheckpointError
from encoders.sam import SamConfig, build_sam

spm = pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf", reason="transformers needs protobuf to read a sentencepiece tokenizer.model")

SP_VOCAB = 360
HIDDEN, LAYERS, HEADS, INTERMEDIATE = 64, 2, 4, 160
CLIP_WIDTH, CLIP_LAYERS, CLIP_IMAGE, CLIP_PATCH = 32, 3, 56, 14
SAM = SamConfig.named("tiny")
THETA, EPS = 10000.0, 1e-6
LAYOUTS = {  # LISA's added_tokens.json
    "7b": {"<im_patch>": SP_VOCAB, "<im_start>": SP_VOCAB + 1, "<im_end>": SP_VOCAB + 2, "[SEG]": SP_VOCAB + 3},
    "13b": {"[SEG]": SP_VOCAB, "<im_start>": SP_VOCAB + 1, "<im_end>": SP_VOCAB + 2},
}


# ------------------------------------------------------------------------------------ a tiny LISA release
def _sentencepiece_model() -> bytes:
    corpus = [LLAVA_V1_SYSTEM, "USER: Can you segment the dog in this image? ASSISTANT: Sure, it is the dog.",
              "the red circle left of the blue square", "Please output segmentation mask.", "What is it?"] * 10
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(  # LLaMA's settings: BPE, byte fallback, unk/bos/eos = 0/1/2, no pad
        sentence_iterator=iter(corpus), model_writer=buffer, vocab_size=SP_VOCAB, model_type="bpe",
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0,
        allow_whitespace_only_pieces=True, minloglevel=2, num_threads=1)
    return buffer.getvalue()


def _lisa_tensors(vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """LISA's key names at tiny sizes; LLaMA and projector bf16, SAM and text_hidden_fcs fp32."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=None):
        scale = scale if scale is not None else shape[-1] ** -0.5
        return (torch.randn(*shape, generator=g) * scale).to(torch.bfloat16)

    def norm(n):
        return (1 + 0.1 * torch.randn(n, generator=g)).to(torch.bfloat16)

    head = HIDDEN // HEADS
    state = {"model.embed_tokens.weight": rand(vocab, HIDDEN, scale=1.0)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        for name in "qkvo":
            state[p + f"self_attn.{name}_proj.weight"] = rand(HIDDEN, HIDDEN)
        state[p + "self_attn.rotary_emb.inv_freq"] = 1.0 / THETA ** (torch.arange(0, head, 2).float() / head)
        state[p + "mlp.gate_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[p + "mlp.up_proj.weight"] = rand(INTERMEDIATE, HIDDEN)
        state[p + "mlp.down_proj.weight"] = rand(HIDDEN, INTERMEDIATE)
        state[p + "input_layernorm.weight"] = norm(HIDDEN)
        state[p + "post_attention_layernorm.weight"] = norm(HIDDEN)
    state["model.norm.weight"] = norm(HIDDEN)
    state["lm_head.weight"] = rand(vocab, HIDDEN)
    state["model.mm_projector.weight"] = rand(HIDDEN, CLIP_WIDTH)
    state["model.mm_projector.bias"] = rand(HIDDEN, scale=0.1)
    torch.manual_seed(seed)
    for key, value in build_sam(SAM).state_dict().items():
        state["model.visual_model." + key] = value + 0.01 * torch.randn(value.shape, generator=g)
    state["model.text_hidden_fcs.0.0.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g) * HIDDEN ** -0.5
    state["model.text_hidden_fcs.0.0.bias"] = torch.randn(HIDDEN, generator=g) * 0.1
    state["model.text_hidden_fcs.0.2.weight"] = torch.randn(SAM.prompt_dim, HIDDEN, generator=g) * HIDDEN ** -0.5
    state["model.text_hidden_fcs.0.2.bias"] = torch.randn(SAM.prompt_dim, generator=g) * 0.1
    return state


def _save_shards(state: dict[str, torch.Tensor], directory: Path) -> None:
    """pytorch_model-0000k-of-00003.bin + pytorch_model.bin.index.json, as transformers 4.31 writes them."""
    first = tuple(f"model.layers.{i}." for i in range(LAYERS // 2))
    second = tuple(f"model.layers.{i}." for i in range(LAYERS // 2, LAYERS))
    groups = [[k for k in state if k.startswith(("model.embed_tokens", *first))],
              [k for k in state if k.startswith((*second, "model.norm", "lm_head", "model.mm_projector"))],
              [k for k in state if k.startswith(("model.visual_model.", "model.text_hidden_fcs."))]]
    assert sum(map(len, groups)) == len(state)
    weight_map = {}
    for index, keys in enumerate(groups, start=1):
        name = f"pytorch_model-{index:05d}-of-{len(groups):05d}.bin"
        torch.save({k: state[k] for k in keys}, directory / name)
        weight_map.update(dict.fromkeys(keys, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _added_token(text):
    return {"__type": "AddedToken", "content": text, "lstrip": False, "normalized": True, "rstrip": False,
            "single_word": False}


def write_lisa(directory: Path, layout: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny LISA release in ``directory``; returns its tensors."""
    directory.mkdir(parents=True)
    added = LAYOUTS[layout]
    vocab = SP_VOCAB + len(added)
    (directory / "tokenizer.model").write_bytes(_sentencepiece_model())
    (directory / "added_tokens.json").write_text(json.dumps(added))
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": _added_token("<s>"),
        "eos_token": _added_token("</s>"), "unk_token": _added_token("<unk>"), "pad_token": None,
        "clean_up_tokenization_spaces": False, "legacy": False, "model_max_length": 512, "padding_side": "right",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer"}))
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LISAForCausalLM"], "model_type": "llava", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "rms_norm_eps": EPS,
        "max_position_embeddings": 512, "rope_scaling": None, "tie_word_embeddings": False, "vocab_size": vocab,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "torch_dtype": "bfloat16",
        "mm_hidden_size": CLIP_WIDTH, "mm_use_im_start_end": True, "mm_use_im_patch_token": False,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "mm_vision_tower": "tests/tiny-clip", "out_dim": SAM.prompt_dim,
        "train_mask_decoder": True, "transformers_version": "4.31.0"}))
    (directory / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "eos_token_id": 0,
                                                                   "pad_token_id": -1}))
    state = _lisa_tensors(vocab, seed)
    _save_shards(state, directory)
    return state


def write_clip(directory: Path, full_model: bool, seed: int = 0) -> None:
    """An HF CLIP directory: CLIPVisionModel, or a whole CLIPModel (as openai/clip-vit-large-patch14 is)."""
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(hidden_size=CLIP_WIDTH, intermediate_size=4 * CLIP_WIDTH, num_hidden_layers=CLIP_LAYERS,
                              num_attention_heads=2, image_size=CLIP_IMAGE, patch_size=CLIP_PATCH, projection_dim=16)
    if full_model:
        text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              vocab_size=100, projection_dim=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                             projection_dim=16)).save_pretrained(directory)
    else:
        CLIPVisionModel(vision).save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": CLIP_IMAGE, "do_center_crop": True, "do_resize": True, "size": CLIP_IMAGE,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))


@pytest.fixture(scope="module", params=["7b", "13b"])
def converted(request, tmp_path_factory):
    """(layout, LISA dir, its tensors, CLIP dir, converted AnyRef dir)."""
    layout = request.param
    root = tmp_path_factory.mktemp(f"lisa{layout}")
    state = write_lisa(root / "lisa", layout)
    write_clip(root / "clip", full_model=layout == "13b")
    out = convert_lisa(root / "lisa", root / "clip", root / "anyref", sam_type="tiny")
    return layout, root / "lisa", state, root / "clip", out


@pytest.fixture(scope="module")
def loaded(converted):
    return AnyRef.from_pretrained(converted[4])


def _read_out(directory: Path) -> dict[str, torch.Tensor]:
    index = directory / "model.safetensors.index.json"
    files = set(json.loads(index.read_text())["weight_map"].values()) if index.is_file() else {"model.safetensors"}
    state = {}
    for name in files:
        state.update(load_file(directory / name))
    return state


# -------------------------------------------------------------------------------- LISA computed by hand
def _rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * weight


def _rope(x):  # heads x L x D
    length, dim = x.shape[-2], x.shape[-1]
    angles = torch.arange(length, dtype=torch.float64)[:, None] / THETA ** (torch.arange(0, dim, 2) / dim)[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1).float(), torch.cat([angles.sin()] * 2, -1).float()
    half = dim // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def reference_llama(src: dict, embeds: torch.Tensor) -> torch.Tensor:
    """LLaMA's decoder on L x H input embeddings, from LISA's fp32-cast tensors; returns last states L x H."""
    w = {k: v.float() for k, v in src.items()}
    length, head = embeds.shape[0], HIDDEN // HEADS
    causal = torch.full((length, length), float("-inf")).triu(1)
    h = embeds
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        x = _rms(h, w[p + "input_layernorm.weight"])
        q, k, v = ((x @ w[p + f"self_attn.{n}_proj.weight"].T).view(length, HEADS, head).transpose(0, 1) for n in "qkv")
        scores = _rope(q) @ _rope(k).transpose(-1, -2) / math.sqrt(head) + causal
        attended = (scores.softmax(-1) @ v).transpose(0, 1).reshape(length, HIDDEN)
        h = h + attended @ w[p + "self_attn.o_proj.weight"].T
        x = _rms(h, w[p + "post_attention_layernorm.weight"])
        gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
        h = h + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    return _rms(h, w["model.norm.weight"])


def reference_embeds(src: dict, clip_dir: Path, ids: torch.Tensor, image_id: int, clip_pixels: torch.Tensor):
    """LISA's input: token rows of its embedding, the image slots filled with CLIP layer -2 patch features
    through its one Linear projector."""
    clip = CLIPVisionModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        patches = clip(clip_pixels[None], output_hidden_states=True).hidden_states[-2][0, 1:]
    features = patches @ src["model.mm_projector.weight"].float().T + src["model.mm_projector.bias"].float()
    slots = ids == image_id
    assert int(slots.sum()) == features.shape[0]
    embeds = src["model.embed_tokens.weight"].float()[ids.masked_fill(slots, 0)]
    embeds[slots] = features
    return embeds


def reference_masks(src: dict, states: torch.Tensor, sam_pixels, sam_size, image_size) -> torch.Tensor:
    """text_hidden_fcs then SAM, fed as LISA feeds it: N x H [SEG] states -> N x H x W mask logits."""
    fcs = {k[len("model.text_hidden_fcs.0."):]: v for k, v in src.items() if k.startswith("model.text_hidden_fcs.")}
    prompts = F.relu(states @ fcs["0.weight"].T + fcs["0.bias"]) @ fcs["2.weight"].T + fcs["2.bias"]
    sam = build_sam(SAM).eval()
    sam.load_state_dict({k[len("model.visual_model."):]: v for k, v in src.items()
                         if k.startswith("model.visual_model.")}, strict=True)
    with torch.no_grad():
        embedding = sam.image_encoder(sam_pixels[None])
        sparse, dense = sam.prompt_encoder(points=None, boxes=None, masks=None)  # 1 x 0 x C, 1 x C x g x g
        sparse = torch.cat([sparse.expand(len(prompts), -1, -1), prompts[:, None]], dim=1)
        low, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                  sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense.expand(
                                      len(prompts), -1, -1, -1), multimask_output=False)
        return sam.postprocess_masks(low, sam_size, image_size)[:, 0]


def _sample(model):
    image = (np.random.default_rng(5).random((70, 90, 3)) * 255).astype(np.uint8)
    masks = np.zeros((1, 70, 90), dtype=bool)
    masks[0, 10:40, 20:60] = True
    sample = ReferringSample(image, ["the dog"], "segment", ["the dog ", OBJ, "."], masks)
    return collate([prepare(sample, model.builder)], model.ids.pad)


# ------------------------------------------------------------------------------------------------- tests
def test_every_key_maps_and_sam_and_projection_are_unchanged(converted, loaded):
    layout, _, src, _, out = converted
    written = _read_out(out)
    assert set(written) == set(loaded.state_dict())  # nothing missing, nothing unexpected
    mapped = {}
    for key, tensor in src.items():
        target = lisa_module.lisa_key(key)
        if target is None:
            assert key.endswith("rotary_emb.inv_freq")
            continue
        mapped[target] = key
        if key.startswith(("model.visual_model.", "model.text_hidden_fcs.")):
            assert written[target].dtype == torch.float32 and torch.equal(written[target], tensor), key
        elif target in lisa_module.ROW_KEYS:
            assert torch.equal(written[target][:len(tensor)], tensor)
            mean = tensor.float().mean(0).to(tensor.dtype)
            assert (written[target][len(tensor):] == mean).all()
        else:
            assert written[target].dtype == torch.bfloat16 and torch.equal(written[target], tensor), key
    rest = set(written) - set(mapped)
    new_heads = ("mask_projector.", "group_head.")  # AnyRef's mask-token heads: LISA has none (untrained "mask")
    assert all(k.startswith((lisa_module.VISION_TOWER, lisa_module.PROJECTOR_2, *new_heads)) or k == "refocus_lambda"
               for k in rest), sorted(rest)
    clip = CLIPVisionModel.from_pretrained(converted[3]).state_dict()
    assert all(torch.equal(written[lisa_module.VISION_TOWER + k], v) for k, v in clip.items())
    assert torch.equal(written[lisa_module.PROJECTOR_2 + "weight"].float(), torch.eye(HIDDEN))


def test_tokenizer_keeps_lisa_ids_and_adds_anyref_tokens(converted, loaded):
    layout, lisa_dir, _, _, _ = converted
    tokenizer = loaded.tokenizer
    for text, token_id in LAYOUTS[layout].items():
        assert tokenizer.convert_tokens_to_ids(text) == token_id
    assert loaded.ids.obj == LAYOUTS[layout]["[SEG]"]  # [SEG] by id: 363 (7B layout) or 360 (13B layout)
    vocab = SP_VOCAB + len(LAYOUTS[layout])
    new_ids = sorted(tokenizer.convert_tokens_to_ids(t) for k, t in SPECIAL_TOKENS.items() if k != "obj")
    assert new_ids == list(range(vocab, vocab + len(new_ids))) and len(tokenizer) == vocab + len(new_ids)
    assert (loaded.ids.bos, loaded.ids.eos, loaded.ids.pad) == (1, 2, 0)  # not generation_config.json's
    pieces = spm.SentencePieceProcessor(model_file=str(lisa_dir / "tokenizer.model"))
    text = "Can you segment the red circle left of the blue square? 42 ünïcode"
    assert encode_text(tokenizer, text) == pieces.encode(text)
    # typed text never becomes [SEG] or another special token, and [SEG] in an answer is one id
    typed = encode_text(tokenizer, "the [SEG] <im_start> <image> thing")
    assert not set(typed) & {loaded.ids.obj, loaded.ids.image, LAYOUTS[layout]["<im_start>"]}
    assert tokenizer("the dog [SEG].", add_special_tokens=False).input_ids.count(loaded.ids.obj) == 1


def test_config_reproduces_lisa_prompting(converted, loaded):
    config = loaded.config
    assert config.obj_token == "[SEG]" and config.image_wrap and config.system_prompt == LLAVA_V1_SYSTEM
    assert config.vision_resize == "crop" and config.refocus_lambda == 0.0 and float(loaded.refocus_lambda) == 0.0
    assert set(config.untrained_references) == {"box", "example", "audio", "mask"} and config.audio is None
    llava = loaded.llava.config
    assert llava.vision_feature_layer == -2 and llava.vision_feature_select_strategy == "default"
    assert llava.text_config.bos_token_id == 1 and llava.text_config.eos_token_id == 2
    batch = _sample(loaded)
    ids = batch.input_ids[0].tolist()
    start, end = loaded.tokenizer.convert_tokens_to_ids(["<im_start>", "<im_end>"])
    grid = CLIP_IMAGE // CLIP_PATCH
    first = ids.index(start)
    assert ids[0] == 1 and ids[first + 1:first + 1 + grid * grid] == [loaded.ids.image] * grid * grid
    assert ids[first + 1 + grid * grid] == end
    # LISA's tokenizer_image_token encodes the text on each side of the image in one call, and its tokenizer
    # (transformers 4.31, slow) strips the whitespace around added tokens: "...USER:" <im_start>, and after
    # <im_end> "Can you ... ASSISTANT:" without the "\n"; the answer "Sure, it is" [SEG] "." likewise
    pieces = spm.SentencePieceProcessor(model_file=str(converted[1] / "tokenizer.model"))
    assert ids[1:first] == pieces.encode(LLAVA_V1_SYSTEM + " USER:")
    answer_start = int(batch.answer_starts[0])
    question = "Can you segment the dog in this image? ASSISTANT:"
    assert ids[first + 2 + grid * grid:answer_start] == encode_text(loaded.tokenizer, question) == pieces.encode(question)
    assert ids[answer_start:] == pieces.encode("the dog") + [loaded.ids.obj] + pieces.encode(".") + [loaded.ids.eos]
    with pytest.raises(ValueError, match="never trained"):
        loaded.segment(np.zeros((32, 32, 3), np.uint8), Box(1, 1, 10, 10))


def test_logits_equal_lisa_computed_from_source(converted, loaded):
    layout, _, src, clip_dir, _ = converted
    batch = _sample(loaded)
    with torch.no_grad():
        hidden, _, rows, cols, states = loaded.answer_states(batch)
        logits = loaded.llava.lm_head(hidden[0])
    ids = batch.input_ids[0]
    embeds = reference_embeds(src, clip_dir, ids, loaded.ids.image, batch.clip_pixels[0])
    expected_hidden = reference_llama(src, embeds)
    expected = expected_hidden @ src["lm_head.weight"].float().T
    vocab = expected.shape[1]
    torch.testing.assert_close(logits[:, :vocab], expected, atol=2e-4, rtol=1e-4)
    mean_row = src["lm_head.weight"].float().mean(0).to(torch.bfloat16).float()
    torch.testing.assert_close(logits[:, vocab:], (expected_hidden @ mean_row)[:, None].expand(-1, logits.shape[1]
                               - vocab), atol=2e-4, rtol=1e-4)
    # the [SEG] state: the position whose NEXT token id is [SEG] (found by id), refocusing off
    emitting = (ids[1:] == LAYOUTS[layout]["[SEG]"]).nonzero()[:, 0]
    assert cols.tolist() == emitting.tolist() and len(emitting) == 1
    torch.testing.assert_close(states, expected_hidden[emitting], atol=2e-4, rtol=1e-4)


def test_seg_gives_the_mask_of_lisa_projection_and_sam_decoder(converted, loaded):
    layout, _, src, clip_dir, _ = converted
    batch = _sample(loaded)
    with torch.no_grad():
        output = loaded(batch)
    ids = batch.input_ids[0]
    embeds = reference_embeds(src, clip_dir, ids, loaded.ids.image, batch.clip_pixels[0])
    states = reference_llama(src, embeds)[(ids[1:] == LAYOUTS[layout]["[SEG]"]).nonzero()[:, 0]]
    expected = reference_masks(src, states, batch.sam_pixels[0], batch.sam_sizes[0], batch.image_sizes[0])
    assert output.n_masks == 1
    torch.testing.assert_close(output.mask_logits[0], expected, atol=1e-3, rtol=1e-4)
    assert ((expected > 0) == (output.mask_logits[0] > 0)).float().mean() > 0.999
    assert 0 < int((expected > 0).sum()) < expected.numel()  # a real mask, not all on or all off


def test_cli_converts_and_refuses_to_overwrite(tmp_path, capsys):
    write_lisa(tmp_path / "lisa", "13b", seed=3)
    write_clip(tmp_path / "clip", full_model=True)
    args = ["lisa", str(tmp_path / "lisa"), "--clip", str(tmp_path / "clip"), "--out", str(tmp_path / "out"),
            "--sam-type", "tiny", "--refocus-lambda", "0.1"]
    assert main(args) == 0
    model = AnyRef.from_pretrained(tmp_path / "out")
    assert model.config.refocus_lambda == pytest.approx(0.1) and model.ids.obj == SP_VOCAB
    assert main(args) == 2 and "already exists" in capsys.readouterr().err
    assert main(args[:-4] + ["--sam-type", "tiny", "--overwrite"]) == 0
    assert AnyRef.from_pretrained(tmp_path / "out").config.refocus_lambda == 0.0
    assert main(["lisa", str(tmp_path / "lisa"), "--clip", str(tmp_path / "clip"),
                 "--out", str(tmp_path / "lisa" / "inside"), "--sam-type", "tiny"]) == 2


def test_imagebind_adds_an_untrained_audio_encoder(tmp_path):
    from encoders.imagebind_audio import ImageBindAudioConfig, ImageBindAudioEncoder, _rename

    write_lisa(tmp_path / "lisa", "7b")
    write_clip(tmp_path / "clip", full_model=False)
    audio = ImageBindAudioEncoder(ImageBindAudioConfig.tiny())
    torch.save({_rename(k, to_official=True): v for k, v in audio.state_dict().items()}, tmp_path / "ib.pth")
    out = convert_lisa(tmp_path / "lisa", tmp_path / "clip", tmp_path / "out", sam_type="tiny",
                       imagebind=tmp_path / "ib.pth", imagebind_config=ImageBindAudioConfig.tiny())
    model = AnyRef.from_pretrained(out)
    assert model.audio_encoder is not None and "audio" in model.config.untrained_references
    assert all(torch.equal(model.audio_encoder.state_dict()[k], v) for k, v in audio.state_dict().items())


def test_shards_are_read_one_at_a_time(tmp_path, monkeypatch):
    write_lisa(tmp_path / "lisa", "7b")
    write_clip(tmp_path / "clip", full_model=False)
    import anyref.convert.shards as shards

    class Shard(dict):
        pass

    live: list[weakref.ref] = []
    read = shards.read_shard

    def tracked(path):
        assert all(ref() is None or not ref() for ref in live), "a previous shard still holds tensors"
        state = Shard(read(path))
        live.append(weakref.ref(state))
        return state

    monkeypatch.setattr(shards, "read_shard", tracked)
    convert_lisa(tmp_path / "lisa", tmp_path / "clip", tmp_path / "out", sam_type="tiny")
    assert len(live) == 3


@pytest.mark.parametrize("damage", ["missing", "unexpected", "pickle", "arch", "clip"])
def test_broken_checkpoints_are_refused_and_nothing_is_written(tmp_path, damage):
    state = write_lisa(tmp_path / "lisa", "7b")
    write_clip(tmp_path / "clip", full_model=False)
    lisa = tmp_path / "lisa"
    last = "pytorch_model-00003-of-00003.bin"
    index = json.loads((lisa / "pytorch_model.bin.index.json").read_text())
    if damage == "missing":  # a SAM tensor gone from shard and index
        key = "model.visual_model.mask_decoder.iou_token.weight"
        torch.save({k: v for k, v in state.items() if index["weight_map"][k] == last and k != key}, lisa / last)
        del index["weight_map"][key]
        expected = "sam.mask_decoder.iou_token.weight"
    elif damage == "unexpected":
        shard = torch.load(lisa / last, weights_only=True)
        shard["model.vision_tower.extra.weight"] = torch.zeros(2)
        torch.save(shard, lisa / last)
        index["weight_map"]["model.vision_tower.extra.weight"] = last
        expected = "model.vision_tower.extra.weight"
    elif damage == "pickle":
        torch.save({"model.norm.weight": torch.ones(HIDDEN), "note": Path("x")}, lisa / last)
        expected = "weights-only"
    elif damage == "arch":
        config = json.loads((lisa / "config.json").read_text())
        (lisa / "config.json").write_text(json.dumps({**config, "architectures": ["LlavaLlamaForCausalLM"]}))
        expected = "not LISAForCausalLM"
    else:  # the tiny CLIP is not the CLIP ViT-L/14 at 224 px that the config names
        config = json.loads((lisa / "config.json").read_text())
        (lisa / "config.json").write_text(json.dumps({**config, "mm_vision_tower": "openai/clip-vit-large-patch14"}))
        expected = "trained with openai/clip-vit-large-patch14 (224 px, patch 14)"
    (lisa / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    kind = CheckpointError if damage in ("missing", "unexpected", "pickle") else ValueError
    with pytest.raises(kind, match=re.escape(expected)):
        convert_lisa(lisa, tmp_path / "clip", tmp_path / "out", sam_type="tiny")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.slow
def test_peak_memory_is_one_copy_plus_one_shard(tmp_path):
    """Converting a ~0.5 GB checkpoint in a fresh process: peak RSS above the import baseline stays within the
    weights written plus the largest shard (the code holds one copy plus, transiently, one shard)."""
    root = str(Path(__file__).parent.parent)
    lisa, clip, out = (str(tmp_path / name) for name in ("lisa", "clip", "out"))
    write = f"""
from pathlib import Path
import tests.test_convert_lisa as t
t.HIDDEN, t.LAYERS, t.INTERMEDIATE, t.HEADS = 1024, 20, 2816, 8
t.write_lisa(Path({lisa!r}), "7b")
t.write_clip(Path({clip!r}), full_model=False)
"""
    subprocess.run([sys.executable, "-c", write], check=True, cwd=root, capture_output=True)
    measure = f"""
import resource
import anyref.api, segment_anything, torch, transformers
from anyref.convert.lisa import convert_lisa
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
convert_lisa({lisa!r}, {clip!r}, {out!r}, sam_type="tiny")
print(base * 1024, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
    result = subprocess.run([sys.executable, "-c", measure], check=True, capture_output=True, text=True, cwd=root,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    base, peak = map(int, result.stdout.split()[-2:])
    weights = sum(p.stat().st_size for p in (tmp_path / "out").glob("*.safetensors"))
    largest_shard = max(p.stat().st_size for p in (tmp_path / "lisa").glob("*.bin"))
    assert weights > 400e6
    print(f"peak above baseline {(peak - base) / 1e6:.0f} MB; weights {weights / 1e6:.0f} MB; "
          f"largest shard {largest_shard / 1e6:.0f} MB")
    assert peak - base <= weights + largest_shard
