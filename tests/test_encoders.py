"""LLaVA and SAM wrappers against the upstream classes."""
import json

import pytest
import torch
from segment_anything import sam_model_registry

from encoders.checkpoints import CheckpointError
from encoders.llava import build_llava, load_llava, patch_grid_size, project_vision, tiny_llava_config, vision_patch_grid
from encoders.sam import SAM_SIZES, SamConfig, build_sam, load_sam_checkpoint, sam_preprocess
from tests.conftest import scene


def test_vision_grid_matches_get_image_features():
    llava = build_llava(tiny_llava_config(vocab_size=50, image_token_id=3, pad_token_id=0))
    pixels = torch.randn(2, 3, 128, 128)
    grid = vision_patch_grid(llava, pixels)
    assert grid.shape == (2, 64, 8, 8)
    ours = project_vision(llava, grid.flatten(2).transpose(1, 2))
    theirs = llava.model.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(ours, torch.stack(list(theirs)))


@pytest.mark.parametrize("size,patch,grid", [(224, 14, 16), (336, 14, 24), (128, 16, 8)])
def test_patch_grid_follows_the_vision_tower(size, patch, grid):
    config = tiny_llava_config(vocab_size=50, image_token_id=3, pad_token_id=0, image_size=size, patch_size=patch)
    assert patch_grid_size(config) == grid


def test_llava_from_pretrained_round_trip(tmp_path):
    llava = build_llava(tiny_llava_config(vocab_size=50, image_token_id=3, pad_token_id=0))
    llava.save_pretrained(tmp_path)
    loaded = load_llava(tmp_path)
    ids = torch.tensor([[1, 2, 4, 5]])
    torch.testing.assert_close(loaded(input_ids=ids).logits, llava(input_ids=ids).logits)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_llava(tmp_path / "missing")


def test_llava_checkpoints_that_would_load_half_are_refused(tmp_path):
    """transformers only warns about missing keys or another model_type; load_llava refuses them."""
    from safetensors.torch import load_file, save_file

    llava = build_llava(tiny_llava_config(vocab_size=50, image_token_id=3, pad_token_id=0))
    llava.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in weights if "layers.0.self_attn.q_proj" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="1 missing keys"):
        load_llava(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llava_llama"}))
    with pytest.raises(CheckpointError, match="'llava_llama' model, not an HF-format LLaVA"):
        load_llava(tmp_path)


def test_official_sam_layout_loads_strictly(tmp_path):
    """A checkpoint in the official vit_b layout (segment-anything's own builder) loads into our build."""
    official = sam_model_registry["vit_b"]()
    path = tmp_path / "sam_vit_b.pth"
    torch.save(official.state_dict(), path)
    ours = build_sam(SAM_SIZES["vit_b"])
    load_sam_checkpoint(ours, path)
    for (name, theirs), mine in zip(official.state_dict().items(), ours.state_dict().values()):
        assert torch.equal(theirs, mine), name
    wrong = build_sam(SAM_SIZES["tiny"])
    with pytest.raises(CheckpointError, match="image_encoder"):
        load_sam_checkpoint(wrong, path)


def test_sam_preprocess_matches_segment_anything():
    sam = build_sam(SAM_SIZES["tiny"])
    image = scene(0)
    ours, size = sam_preprocess(image, 128)
    from segment_anything.utils.transforms import ResizeLongestSide

    resized = ResizeLongestSide(128).apply_image(image)
    theirs = sam.preprocess(torch.from_numpy(resized).permute(2, 0, 1)[None].float())[0]
    assert size == resized.shape[:2]
    torch.testing.assert_close(ours, theirs)


def test_sam_config_validation():
    with pytest.raises(ValueError, match="multiple of patch_size"):
        SamConfig(image_size=100, patch_size=16)
    with pytest.raises(ValueError, match="unknown SAM type"):
        SamConfig.named("vit_x")
    assert SamConfig.from_dict(SAM_SIZES["vit_h"].to_dict()) == SAM_SIZES["vit_h"]


def test_tiny_fine_sam_draws_masks_at_its_input_resolution():
    """tiny-fine's 32 x 32 embedding grid: the decoder's 4x upscaling gives low-res masks of the full 128 px."""
    config = SAM_SIZES["tiny-fine"]
    sam = build_sam(config)
    embedding = sam.image_encoder(torch.zeros(1, 3, config.image_size, config.image_size))
    assert embedding.shape == (1, config.prompt_dim, 32, 32) and config.embedding_size == 32
    sparse, dense = sam.prompt_encoder(points=None, boxes=torch.tensor([[10.0, 10.0, 60.0, 60.0]]), masks=None)
    masks, _ = sam.mask_decoder(image_embeddings=embedding, image_pe=sam.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                multimask_output=False)
    assert masks.shape == (1, 1, config.image_size, config.image_size)
