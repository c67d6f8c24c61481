"""benchmarks/region_diagnostics.py's canvas check: a crop placed on a larger canvas, scored over
its own box, with the tower's positional embedding resampled or tiled."""

from unittest import mock

import pytest
import torch

import benchmarks.region_diagnostics as diagnostics
from benchmarks.region_diagnostics import (
    LocalTowerScorer,
    canvas_check,
    canvas_images,
    tiled_pos_embed,
)
from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.clip import dense as dense_module


def test_tiled_positions_repeat_the_native_grid_in_each_quarter():
    native = torch.randn(1 + 4 * 4, 8)
    tiled = tiled_pos_embed(native, (4, 4), (8, 8))
    assert tiled.shape == (1 + 64, 8)
    assert torch.equal(tiled[0], native[0])  # class token unchanged
    grid = tiled[1:].reshape(8, 8, 8)
    for y0 in (0, 4):
        for x0 in (0, 4):
            assert torch.equal(grid[y0 : y0 + 4, x0 : x0 + 4].reshape(16, 8), native[1:])
    assert torch.equal(tiled_pos_embed(native, (4, 4), (4, 4)), native)
    with pytest.raises(ValueError, match="not a multiple"):
        tiled_pos_embed(native, (4, 4), (6, 8))


def test_the_canvas_holds_the_crop_top_left_and_gray_or_other_crops_elsewhere():
    crops = torch.stack([torch.full((3, 8, 8), v) for v in (0.1, 0.2, 0.3, 0.4)])
    gray = canvas_images(crops, 2, "gray", torch.Generator().manual_seed(0))
    assert gray.shape == (1, 3, 16, 16)
    assert torch.all(gray[0, :, :8, :8] == 0.3)
    assert torch.all(gray[0, :, 8:, :] == 0.5) and torch.all(gray[0, :, :, 8:] == 0.5)
    mixed = canvas_images(crops, 2, "crops", torch.Generator().manual_seed(0))
    assert torch.all(mixed[0, :, :8, :8] == 0.3)
    for quarter in (mixed[0, :, :8, 8:], mixed[0, :, 8:, :8], mixed[0, :, 8:, 8:]):
        assert any(torch.equal(quarter, c) for c in crops)
    with pytest.raises(ValueError, match="canvas fill"):
        canvas_images(crops, 0, "noise", torch.Generator())


def test_canvas_check_scores_every_crop_and_restores_the_resampling(one_torch_thread):
    model = build_clip_model("ovdet-tiny-vit-avg", "").eval()
    g = torch.Generator().manual_seed(0)
    categories = [{"id": i + 1, "name": f"kind{i}"} for i in range(3)]
    crops = {
        "images": torch.rand(6, 3, 64, 64, generator=g),
        "category_ids": [1, 2, 3, 1, 2, 3],
        "categories": categories,
    }
    text = torch.randn(3, model.text_projection.shape[1], generator=g)
    original = dense_module.interpolate_pos_embed
    for fill in ("gray", "crops"):
        for pos in ("resampled", "tiled"):
            acc = canvas_check(model, text, crops, fill, pos)
            assert any(acc == pytest.approx(100.0 * k / 6) for k in range(7))
    assert dense_module.interpolate_pos_embed is original
    # "tiled" runs the tower with the tiled embedding, on the 2x canvas's 16x16 grid
    with mock.patch.object(diagnostics, "tiled_pos_embed", wraps=tiled_pos_embed) as spy:
        canvas_check(model, text, crops, "gray", "tiled")
    assert spy.call_count == 6 and all(c.args[2] == (16, 16) for c in spy.call_args_list)
    with pytest.raises(ValueError, match="positional embedding"):
        canvas_check(model, text, crops, "gray", "bicubic")


def test_tile_towers_run_the_tower_on_its_native_tiles():
    """``--towers tileS``: the scorer's own windows at the tower's input size, stride S; with S
    equal to the input size each quarter of a 2x image is that quarter's own map."""
    torch.manual_seed(0)
    model = build_clip_model("ovdet-tiny-vit-avg")  # 64-px input, patch 8
    x = torch.randn(1, 3, 128, 128)
    tiles = LocalTowerScorer(model.visual, "tile64", 64)
    assert (tiles.window, tiles.window_stride) == (64, 64)
    out, glob = tiles.tower_map(x), LocalTowerScorer(model.visual, "global", 64)
    assert glob.window == 0 and out.shape == glob.tower_map(x).shape == (1, 64, 16, 16)
    quarter = glob.tower_map(x[:, :, 64:, :64])
    torch.testing.assert_close(out[..., 8:, :8], quarter)
