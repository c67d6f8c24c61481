"""Dense, region-aligned features from an open_clip ViT (the CLIPSelf "v2" extractor).

A CLIP ViT's patch tokens are not aligned with its joint image-text space: only the class token
is trained to be. CLIPSelf (Wu et al., ICLR 2024; methods §3.1) reads a per-patch map in that
space by running the **last** residual block *without* query-key attention: the attention branch
becomes the value projection followed by the output projection (every token "attends" only to
itself), the residual connections and the MLP are kept, then the final norm and the projection
are applied to every patch token and each token is L2-normalised.

This module wraps open_clip's ``VisionTransformer`` as it is (its blocks, norms and projection are
called, never re-implemented); what it adds is

- :func:`interpolate_pos_embed`: bicubic positional-embedding resampling to any patch grid
  (CLIPSelf's ``rescale_positional_embedding``, ``align_corners=False``; the identity at the
  native grid);
- :func:`value_only_block_forward`: the value-only last block (CLIPSelf's
  ``ResidualAttentionBlockV2.forward_without_attn``, methods §3.1 and 3.1);
- :class:`DenseCLIPViT`: the tower as a module with ``embed`` / ``run_blocks`` / ``project``
  steps, optional window attention (ViTDet-style window partitioning around open_clip's unchanged
  blocks), and ``forward(images) -> (B, D, h, w)`` dense map. It is the module the CLIPSelf
  trainer fine-tunes, the F-ViT backbone taps, and the dense VLM scorer pools.
"""

import logging
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DenseCLIPViT",
    "checked_tile_stride",
    "interpolate_pos_embed",
    "is_open_clip_vit",
    "tile_starts",
    "value_only_block_forward",
    "window_partition",
    "window_unpartition",
]

logger = logging.getLogger(__name__)


def is_open_clip_vit(visual: nn.Module) -> bool:
    """True for open_clip's own ``VisionTransformer`` (not the timm-based ``TimmModel`` towers)."""
    from open_clip.transformer import VisionTransformer

    return isinstance(visual, VisionTransformer)


def interpolate_pos_embed(
    pos_embed: torch.Tensor, native_grid: Tuple[int, int], grid: Tuple[int, int]
) -> torch.Tensor:
    """Resample a ViT positional embedding (class token first) to another patch grid.

    Bicubic, ``align_corners=False``, class-token entry kept unchanged, as CLIPSelf's
    ``rescale_positional_embedding`` (methods §3.1). At the native grid the input tensor itself
    is returned (the identity, bit for bit).

    Args:
        pos_embed: (1 + gh*gw, C) embedding of the native grid, row-major (h, w).
        native_grid: (gh, gw) of ``pos_embed``.
        grid: the target (h, w).
    Returns:
        (1 + h*w, C) tensor.
    """
    gh, gw = int(native_grid[0]), int(native_grid[1])
    h, w = int(grid[0]), int(grid[1])
    if pos_embed.shape[0] != 1 + gh * gw:
        raise ValueError(
            f"Positional embedding has {pos_embed.shape[0]} entries, expected 1 + {gh}*{gw} "
            "(class token + native patch grid)."
        )
    if (h, w) == (gh, gw):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:1], pos_embed[1:]
    patch_pos = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)  # (1, C, gh, gw)
    # bicubic resampling, align_corners=False (CLIPSelf rescale_positional_embedding)
    patch_pos = F.interpolate(
        patch_pos.float(), size=(h, w), mode="bicubic", align_corners=False
    ).to(pos_embed.dtype)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(h * w, -1)
    return torch.cat([cls_pos, patch_pos], dim=0)


def _value_projection(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """V(x): the last third of ``in_proj_weight`` / ``in_proj_bias`` (methods §3.1)."""
    weight = getattr(attn, "in_proj_weight", None)
    if weight is None:
        raise TypeError(
            f"{type(attn).__name__} has no fused in_proj_weight; the value-only block needs "
            "open_clip's nn.MultiheadAttention or transformer.Attention."
        )
    dim = weight.shape[1]
    w_v = weight[2 * dim :]
    bias = getattr(attn, "in_proj_bias", None)
    b_v = bias[2 * dim :] if bias is not None else None
    return F.linear(x, w_v, b_v)


def value_only_block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run an open_clip residual block with its attention replaced by the value path.

    CLIPSelf ``ResidualAttentionBlockV2.forward_without_attn`` (methods §3.1):
    ``x = x + ls_1(out_proj(V(ln_1(x))))``; ``x = x + ls_2(mlp(ln_2(x)))``, where ``V`` is the
    last third of the fused ``in_proj`` (every token attends only to itself, so softmax(qk) @ v
    collapses to v). For open_clip's ``CustomResidualAttentionBlock`` the same rule keeps its extra
    parts (per-head scale, inner norm, ``ln_attn``).

    Args:
        block: ``ResidualAttentionBlock`` or ``CustomResidualAttentionBlock``.
        x: (B, L, C) tokens (batch first).
    Returns:
        (B, L, C).
    """
    from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock

    if isinstance(block, ResidualAttentionBlock):
        attn = block.attn
        v = _value_projection(attn, block.ln_1(x))
        attn_out = attn.out_proj(v)
    elif isinstance(block, CustomResidualAttentionBlock):
        attn = block.attn
        v = _value_projection(attn, block.ln_1(x))
        if attn.head_scale is not None:  # NormFormer per-head scale, applied to attn @ v == v
            B, L, C = v.shape
            v = (v.reshape(B, L, attn.num_heads, -1) * attn.head_scale.reshape(-1, 1)).reshape(
                B, L, C
            )
        attn_out = block.ln_attn(attn.out_proj(attn.ln_inner(v)))
    else:
        raise TypeError(
            f"Value-only forward is defined for open_clip's ResidualAttentionBlock and "
            f"CustomResidualAttentionBlock, got {type(block).__name__}."
        )
    x = x + block.ls_1(attn_out)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x


def tile_starts(size: int, tile: int, stride: int) -> List[int]:
    """Start offsets (pixels) of ``tile``-pixel tiles every ``stride`` pixels along a side of
    ``size`` pixels, the last one flush with the edge ([0] when the side fits in one tile)."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] + tile < size:  # flush with the edge
        starts.append(size - tile)
    return starts


def checked_tile_stride(tile: int, stride: int, patch: int, key: str) -> int:
    """The stride of ``tile``-pixel tiles (0 = half a tile), after checking that both are
    positive multiples of the ``patch`` size when ``tile`` is set (0 = no tiles, the whole
    image). ``key`` names the config key in the error (e.g. ``MODEL.OVD.VLM_SCORER.TOWER_WINDOW``,
    its stride being ``<key>_STRIDE``)."""
    tile, given = int(tile), int(stride)
    stride = given or tile // 2
    if tile < 0 or tile % patch or (tile and (stride <= 0 or stride % patch)):
        raise ValueError(
            f"{key} ({tile}) and {key}_STRIDE ({given}) must be multiples of the tower's patch "
            f"size ({patch}) and positive (a window of 0 = the whole image): e.g. the tower's "
            "input size and half of it."
        )
    return stride


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Split a (B, H, W, C) token map into non-overlapping windows, zero-padding H, W.

    Returns:
        windows: (B * nH * nW, window_size**2, C); (Hp, Wp): the padded size.
    """
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: Tuple[int, int], hw: Tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B*nH*nW, ws*ws, C) -> (B, H, W, C), padding cropped."""
    Hp, Wp = padded_hw
    H, W = hw
    C = windows.shape[-1]
    B = windows.shape[0] // ((Hp // window_size) * (Wp // window_size))
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
    return x[:, :H, :W, :].contiguous()


class DenseCLIPViT(nn.Module):
    """An open_clip ``VisionTransformer`` run at any input size, with CLIPSelf's dense output.

    The wrapped tower is ``self.visual`` (unchanged open_clip modules, so open_clip and CLIPSelf
    checkpoints keep their key names under ``visual.``).

    Steps (each usable on its own):
        ``embed(images)`` -> tokens (B, 1 + h*w, C), grid (h, w)
        ``run_blocks(tokens, grid, ...)`` -> final tokens and tapped block outputs
        ``project(tokens, grid)`` -> (B, D, h, w) L2-normalised map in CLIP's joint space
        ``forward(images)`` -> the CLIPSelf dense map (value-only last block), (B, D, h, w)
    """

    def __init__(self, visual: nn.Module):
        """
        Args:
            visual: open_clip ``VisionTransformer`` (``model.visual``) with a class token,
                learnable positional embedding and a projection (``proj``).
        """
        super().__init__()
        if not is_open_clip_vit(visual):
            raise TypeError(
                f"DenseCLIPViT needs an open_clip VisionTransformer tower, got "
                f"{type(visual).__name__}. open_clip's timm-based towers (EVA02-*, convnext_*) "
                "are not supported (see README, 'CLIP backbones'); ResNet towers use CLIPResNet."
            )
        if getattr(visual, "attn_pool", None) is not None:
            raise ValueError(
                "CLIP ViT towers with an attentional pooler (CoCa) have no per-token projection; "
                "use a standard CLIP ViT (ViT-B-16, ViT-L-14, ...)."
            )
        if visual.proj is None:
            raise ValueError("The CLIP ViT tower has no projection (proj is None).")
        self.visual = visual
        self.patch_size: Tuple[int, int] = tuple(int(p) for p in visual.patch_size)
        self.native_grid: Tuple[int, int] = tuple(int(g) for g in visual.grid_size)
        self.width = int(visual.transformer.width)
        self.num_layers = len(visual.transformer.resblocks)
        self.embed_dim = int(visual.proj.shape[1])

    # ---------------------------------------------------------------- steps
    def embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Patch embedding + class token + (interpolated) positional embedding + ``ln_pre``.

        open_clip ``VisionTransformer._embeds`` without patch dropout (dense maps need every
        patch). Args: images (B, 3, H, W), H and W multiples of the patch size. Returns: tokens
        (B, 1 + h*w, C) and the grid (h, w) = (H/p, W/p).
        """
        visual = self.visual
        H, W = images.shape[-2:]
        ph, pw = self.patch_size
        if H % ph or W % pw:
            raise ValueError(
                f"Input size {H}x{W} is not a multiple of the patch size {ph}x{pw}; pad it first "
                "(Detectron2 does so through the backbone's size_divisibility)."
            )
        x = visual.conv1(images)  # (B, C, h, w)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = interpolate_pos_embed(visual.positional_embedding, self.native_grid, grid)
        x = x + pos.to(x.dtype)
        x = visual.ln_pre(x)
        return x, grid

    def _block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        blk = self.visual.transformer.resblocks[i]
        if self.visual.transformer.batch_first:
            return blk(x)
        return blk(x.transpose(0, 1)).transpose(0, 1)

    def _windowed_block(
        self, i: int, x: torch.Tensor, grid: Tuple[int, int], window_size: int
    ) -> torch.Tensor:
        """Run block ``i`` with attention restricted to ``window_size``² patch windows.

        The block itself is open_clip's, unchanged: everything but attention is per token, so
        running it on window-partitioned sequences is windowed attention (ViTDet's layout; the
        zero-padded tokens of partial windows take part as keys, as in ViTDet). The class token
        runs as its own one-token sequence in windowed blocks.
        """
        B, _, C = x.shape
        h, w = grid
        cls, patches = x[:, :1], x[:, 1:].reshape(B, h, w, C)
        windows, padded = window_partition(patches, window_size)
        windows = self._block(i, windows)
        patches = window_unpartition(windows, window_size, padded, (h, w)).reshape(B, h * w, C)
        cls = self._block(i, cls)
        return torch.cat([cls, patches], dim=1)

    def run_blocks(
        self,
        x: torch.Tensor,
        grid: Tuple[int, int],
        *,
        out_indices: Sequence[int] = (),
        value_only_last: bool = False,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
        stop_at: Optional[int] = None,
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run the transformer blocks.

        Args:
            x: (B, 1 + h*w, C) tokens from :meth:`embed`.
            grid: (h, w).
            out_indices: block indices whose outputs are returned (in this order).
            value_only_last: run the last block value-only (CLIPSelf, methods §3.1/3.8).
            window_size: > 0 enables window attention in ``window_block_indexes``.
            window_block_indexes: blocks that use window attention (the rest are global).
            stop_at: run blocks ``0..stop_at`` only (default: all).
        Returns:
            the output tokens of the last block run (B, 1 + h*w, C) and the tapped outputs.
        """
        last = self.num_layers - 1 if stop_at is None else int(stop_at)
        windowed = set(int(i) for i in window_block_indexes) if window_size > 0 else set()
        taps = {int(i) for i in out_indices}
        tapped = {}
        for i in range(last + 1):
            if value_only_last and i == self.num_layers - 1:
                if self.visual.transformer.batch_first:
                    x = value_only_block_forward(self.visual.transformer.resblocks[i], x)
                else:
                    raise ValueError("value-only forward expects batch-first open_clip blocks")
            elif i in windowed:
                x = self._windowed_block(i, x, grid, window_size)
            else:
                x = self._block(i, x)
            if i in taps:
                tapped[i] = x
        return x, [tapped[int(i)] for i in out_indices]

    @staticmethod
    def tokens_to_map(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """(B, 1 + h*w, C) tokens -> (B, C, h, w) patch map (class token dropped)."""
        B, _, C = x.shape
        return x[:, 1:].transpose(1, 2).reshape(B, C, grid[0], grid[1])

    def project(
        self, x: torch.Tensor, grid: Tuple[int, int], *, normalize: bool = True
    ) -> torch.Tensor:
        """Final norm + projection of every patch token (CLIPSelf "v2" extractor), optionally
        L2-normalised.

        Args:
            x: (B, 1 + h*w, C) output tokens of the last block.
        Returns:
            (B, D, h, w) map in CLIP's joint embedding space.
        """
        return self.project_map(self.tokens_to_map(x, grid), normalize=normalize)

    def project_map(self, fmap: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """:meth:`project` on a patch map: (B, C, h, w) last-block map -> (B, D, h, w)."""
        tokens = self.visual.ln_post(fmap.permute(0, 2, 3, 1)) @ self.visual.proj  # ln_post, proj
        if normalize:
            tokens = F.normalize(tokens, dim=-1)
        return tokens.permute(0, 3, 1, 2)

    def last_block_map(
        self,
        images: torch.Tensor,
        *,
        value_only_last: bool = False,
        tile: int = 0,
        tile_stride: int = 0,
    ) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H/p, W/p) last-block map (before ``ln_post`` / ``proj``).

        With ``tile`` > 0 the tower runs on ``tile`` x ``tile``-pixel tiles of the image (every
        ``tile_stride`` pixels, 0 = half a tile; the last row and column of tiles flush with the
        image's edge) and the maps of overlapping tiles are averaged: each token then attends
        only inside its tile, at the size a small tower was pretrained at. An image no larger
        than a tile runs whole. ``tile`` and ``tile_stride`` are multiples of the patch size.
        """
        H, W = images.shape[-2:]
        if tile and (H > tile or W > tile):
            return self._tiled_map(images, value_only_last, tile, tile_stride or tile // 2)
        x, grid = self.embed(images)
        x, _ = self.run_blocks(x, grid, value_only_last=value_only_last)
        return self.tokens_to_map(x, grid)

    def _tiled_map(
        self, images: torch.Tensor, value_only_last: bool, tile: int, stride: int
    ) -> torch.Tensor:
        p = self.patch_size[0]
        H, W = images.shape[-2:]
        h, w = min(tile, H), min(tile, W)
        total = images.new_zeros(images.shape[0], self.width, H // p, W // p)
        count = images.new_zeros(1, 1, H // p, W // p)
        for y in tile_starts(H, tile, stride):
            for x in tile_starts(W, tile, stride):
                cells = (..., slice(y // p, (y + h) // p), slice(x // p, (x + w) // p))
                total[cells] += self.last_block_map(
                    images[:, :, y : y + h, x : x + w], value_only_last=value_only_last
                )
                count[cells] += 1
        return total / count

    def forward(
        self,
        images: torch.Tensor,
        *,
        window_size: int = 0,
        window_block_indexes=(),
        tile: int = 0,
        tile_stride: int = 0,
        value_only_last: bool = True,
    ) -> torch.Tensor:
        """CLIPSelf "v2" dense map (methods §3.1).

        Args:
            images: (B, 3, H, W) CLIP-normalised, H and W multiples of the patch size.
            window_size, window_block_indexes: window attention (see :meth:`run_blocks`).
            tile, tile_stride: run the tower on image tiles (see :meth:`last_block_map`).
            value_only_last: the last block value-only (CLIPSelf's map, the default) or with
                its attention (a small tower's second attention layer kept).
        Returns:
            (B, D, H/p, W/p), each location L2-normalised.
        """
        if tile and window_size:
            raise ValueError("Use either window attention or image tiles, not both.")
        if not window_size:  # the whole image, or its tiles
            fmap = self.last_block_map(
                images, value_only_last=value_only_last, tile=tile, tile_stride=tile_stride
            )
            return self.project_map(fmap)
        x, grid = self.embed(images)
        x, _ = self.run_blocks(
            x,
            grid,
            value_only_last=value_only_last,
            window_size=window_size,
            window_block_indexes=window_block_indexes,
        )
        return self.project(x, grid)

    def extra_repr(self) -> str:
        return (
            f"patch_size={self.patch_size}, native_grid={self.native_grid}, width={self.width}, "
            f"layers={self.num_layers}, embed_dim={self.embed_dim}"
        )
