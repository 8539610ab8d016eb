"""The position probe (eval/position_probe.py): it finds a position code that is there, not one that is not, and
reads the image tokens the LLM reads."""
import numpy as np
import pytest
import torch

from anyref.builders import build_tiny
from anyref.synthref import SynthRef
from eval.position_probe import image_token_features, main, ridge_probe
from eval.results import read_results


def _grid_xy(count: int, grid: int) -> torch.Tensor:
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return torch.tensor(np.stack([cols.ravel(), rows.ravel()], 1), dtype=torch.float32).expand(count, -1, -1)


def test_ridge_finds_a_linear_code_and_not_noise():
    torch.manual_seed(0)
    noise = torch.randn(40, 16, 6)
    coded = torch.cat([_grid_xy(40, 4) @ torch.randn(2, 3), noise[..., :3]], -1)  # x, y mixed into 3 channels
    found = ridge_probe(coded)
    assert found["r2_x"] > 0.99 and found["r2_y"] > 0.99 and found["exact_cell"] == 1.0
    blind = ridge_probe(noise)
    assert blind["r2_x"] < 0.1 and blind["r2_y"] < 0.1 and blind["exact_cell"] < 0.3
    with pytest.raises(ValueError, match="fit and to score"):
        ridge_probe(noise[:1])


def test_a_position_map_puts_the_code_into_the_image_tokens(tmp_path):
    """A model whose position map holds each cell's (x, y) gives input embeddings the probe reads exactly."""
    world = SynthRef()
    model = build_tiny(corpus=world.vocabulary(), seed=0,
                       config_overrides={"image_token_merge": 2, "image_positions": True}).eval()
    grid = model.llm_grid
    with torch.no_grad():
        model.image_positions.table.zero_()
        code = _grid_xy(1, grid)[0].T.reshape(2, grid, grid) * 100.0  # far larger than the tokens' own spread
        model.image_positions.table[:2] = code
    features = image_token_features(model, world.split("val", "text", 8), chunk=4)
    assert features["input"].shape == (8, grid * grid, model.llava.config.text_config.hidden_size)
    read = ridge_probe(features["input"])
    assert read["r2_x"] > 0.99 and read["r2_y"] > 0.99
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "probe.json"
    assert main(["--model", str(tmp_path / "model"), "--n", "8", "--out", str(out)]) == 0
    written = read_results(out)
    assert set(written["metrics"]) == {"input", "last_layer"} and written["counts"]["images"] == 8
    assert written["metrics"]["input"]["r2_x"] > 0.99
