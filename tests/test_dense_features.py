"""CLIPSelf dense features (ovdet_plugin.clip.dense, methods §3.1): positional-embedding
interpolation, the value-only last block, window attention, and the dense map itself."""

import pytest
import torch
import torch.nn.functional as F

from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.clip.dense import (
    DenseCLIPViT,
    interpolate_pos_embed,
    value_only_block_forward,
    window_partition,
    window_unpartition,
)


@pytest.fixture(scope="module")
def visual():
    torch.manual_seed(0)
    v = build_clip_model("ovdet-tiny-vit").visual
    # non-trivial norms so that ln_post / ln_1 / ln_2 matter in the comparisons
    with torch.no_grad():
        for m in v.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
    return v


def _self_only_mask(n: int) -> torch.Tensor:
    """Additive attention mask letting each token attend only to itself."""
    mask = torch.full((n, n), float("-inf"))
    mask.fill_diagonal_(0.0)
    return mask


def test_pos_embed_identity_at_native_grid(visual):
    pos = visual.positional_embedding
    out = interpolate_pos_embed(pos, (8, 8), (8, 8))
    assert out is pos  # the very same tensor, bit for bit
    x = torch.randn(2, 3, 64, 64)
    tokens, grid = DenseCLIPViT(visual).embed(x)
    assert grid == (8, 8)
    torch.testing.assert_close(tokens, visual._embeds(x), rtol=0, atol=0)


def test_pos_embed_interpolation_bicubic_keeps_cls():
    torch.manual_seed(1)
    pos = torch.randn(1 + 4 * 6, 5)
    out = interpolate_pos_embed(pos, (4, 6), (7, 3))
    assert out.shape == (1 + 21, 5)
    torch.testing.assert_close(out[0], pos[0], rtol=0, atol=0)
    grid = pos[1:].reshape(4, 6, 5).permute(2, 0, 1)[None]
    expected = F.interpolate(grid, size=(7, 3), mode="bicubic", align_corners=False)
    torch.testing.assert_close(out[1:], expected[0].permute(1, 2, 0).reshape(21, 5))
    # a constant field stays constant (bicubic weights sum to one)
    const = torch.cat([torch.zeros(1, 2), torch.ones(24, 2) * 3.0])
    torch.testing.assert_close(
        interpolate_pos_embed(const, (4, 6), (9, 11))[1:], torch.full((99, 2), 3.0)
    )
    with pytest.raises(ValueError, match="entries"):
        interpolate_pos_embed(pos, (5, 5), (3, 3))


def test_value_only_block_from_weights(visual):
    blk = visual.transformer.resblocks[-1]
    torch.manual_seed(2)
    x = torch.randn(2, 7, 128)
    with torch.no_grad():
        out = value_only_block_forward(blk, x)
        # direct computation from the block's weights (methods §3.1 / 3.1)
        d = 128
        w_v, b_v = blk.attn.in_proj_weight[2 * d :], blk.attn.in_proj_bias[2 * d :]
        h = F.layer_norm(x, (d,), blk.ln_1.weight, blk.ln_1.bias, blk.ln_1.eps)
        h = F.linear(F.linear(h, w_v, b_v), blk.attn.out_proj.weight, blk.attn.out_proj.bias)
        y = x + h
        h2 = F.layer_norm(y, (d,), blk.ln_2.weight, blk.ln_2.bias, blk.ln_2.eps)
        h2 = F.linear(F.gelu(F.linear(h2, blk.mlp.c_fc.weight, blk.mlp.c_fc.bias)),
                      blk.mlp.c_proj.weight, blk.mlp.c_proj.bias)  # fmt: skip
        expected = y + h2
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        # same as open_clip's own block when each token may attend only to itself
        torch.testing.assert_close(out, blk(x, attn_mask=_self_only_mask(7)), atol=1e-5, rtol=1e-5)
        # and different from the ordinary block (the rule matters)
        assert (out - blk(x)).abs().max() > 1e-2


def test_value_only_custom_block():
    """open_clip's CustomResidualAttentionBlock (per-head scale, inner norm, ln_attn)."""
    from open_clip.transformer import CustomResidualAttentionBlock

    torch.manual_seed(3)
    blk = CustomResidualAttentionBlock(
        32, 4, scale_heads=True, scale_attn_inner=True, scale_attn=True, ls_init_value=0.5
    ).eval()
    with torch.no_grad():
        blk.attn.head_scale.normal_(1.0, 0.5)
        blk.attn.in_proj_bias.normal_()
        x = torch.randn(2, 5, 32)
        torch.testing.assert_close(
            value_only_block_forward(blk, x),
            blk(x, attn_mask=_self_only_mask(5)),
            atol=1e-5,
            rtol=1e-5,
        )


def test_dense_map_shape_norm_and_value_rule(visual):
    dense = DenseCLIPViT(visual)
    torch.manual_seed(4)
    x = torch.randn(2, 3, 48, 80)  # non-square, non-native grid 6 x 10
    with torch.no_grad():
        out = dense(x)
        assert out.shape == (2, 64, 6, 10)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(2, 6, 10))
        # direct computation: open_clip blocks 0..L-2, last block with self-only attention,
        # drop CLS, ln_post, @ proj, L2-normalise
        tokens, grid = dense.embed(x)
        blocks = visual.transformer.resblocks
        for blk in blocks[:-1]:
            tokens = blk(tokens)
        tokens = blocks[-1](tokens, attn_mask=_self_only_mask(tokens.shape[1]))
        emb = F.normalize(visual.ln_post(tokens[:, 1:]) @ visual.proj, dim=-1)
        expected = emb.reshape(2, 6, 10, 64).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_windowed_blocks_equal_block_diagonal_mask(visual):
    dense = DenseCLIPViT(visual)
    torch.manual_seed(5)
    x = torch.randn(1, 3, 32, 64)  # grid 4 x 8, windows of 2 x 2
    ws = 2
    with torch.no_grad():
        tokens, grid = dense.embed(x)
        out, _ = dense.run_blocks(tokens, grid, window_size=ws, window_block_indexes=[0, 2])
        # reference: open_clip blocks with a block-diagonal mask (CLS attends only to itself)
        h, w = grid
        win = torch.arange(h * w).reshape(h, w)
        win = (win // w // ws) * (w // ws) + (win % w) // ws
        ids = torch.cat([torch.tensor([-1]), win.reshape(-1)])
        mask = torch.where(ids[:, None] == ids[None, :], 0.0, float("-inf"))
        ref = tokens
        for i, blk in enumerate(visual.transformer.resblocks):
            ref = blk(ref, attn_mask=mask) if i in (0, 2) else blk(ref)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        full, _ = dense.run_blocks(tokens, grid)
        assert (full - out).abs().max() > 1e-3


def test_window_partition_pads_and_roundtrips():
    x = torch.randn(2, 5, 7, 3)
    windows, padded = window_partition(x, 3)
    assert padded == (6, 9) and windows.shape == (2 * 2 * 3, 9, 3)
    torch.testing.assert_close(window_unpartition(windows, 3, padded, (5, 7)), x)


def test_bad_inputs(visual):
    dense = DenseCLIPViT(visual)
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        dense.embed(torch.randn(1, 3, 60, 64))
    with pytest.raises(TypeError, match="VisionTransformer"):
        DenseCLIPViT(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="ResidualAttentionBlock"):
        value_only_block_forward(torch.nn.Linear(2, 2), torch.randn(1, 2, 2))
