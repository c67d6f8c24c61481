"""CLIP ViT (open_clip ``VisionTransformer``) as a Detectron2 backbone + simple feature pyramid.

F-ViT (CLIPSelf, methods §3.8): a frozen CLIP ViT, blocks [3, 5, 7, 11] (B/16) feeding a
simple pyramid (4x up, 2x up, identity, 2x down), the last block run value-only (methods §3.1).
RO-ViT (methods §4.3): a fine-tuned ViT with ViTDet's simple feature pyramid and window attention.
Both are this backbone with different options.

- :class:`CLIPViT` runs the tower at any input size (multiple of the patch size; Detectron2
  pads through ``size_divisibility``), interpolating the positional embedding bicubically to the
  patch grid (:func:`ovdet_plugin.clip.dense.interpolate_pos_embed`), with optional window
  attention (open_clip's blocks run on window-partitioned token sequences; nothing rewritten).
- :class:`CLIPSimpleFeaturePyramid` is Detectron2's ``SimpleFeaturePyramid`` (ViTDet) with two
  changes: each level may take a different ViT block (F-ViT), and its padding constraint is
  reported under the key ``ImageList.from_tensors`` reads (the stock class spells it
  ``size_divisiblity`` and leaves ``size_divisibility`` at 0, so non-square inputs that are not
  multiples of 32 would crash).
"""

import logging
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.vit import SimpleFeaturePyramid
from torch import nn

from ...clip.dense import DenseCLIPViT, is_open_clip_vit
from .clip_resnet import _check_input_channels
from .utils import (
    CLIP_TOWER_FEATURE,
    build_clip_visual,
    check_clip_pixel_normalization,
    clip_backbone_source,
    freeze_module,
    lcm,
)

__all__ = ["CLIPViT", "CLIPSimpleFeaturePyramid", "build_clip_vit_sfp_backbone"]

logger = logging.getLogger(__name__)


class CLIPViT(Backbone):
    """An open_clip CLIP ViT returning the patch maps of chosen blocks.

    Output features are named ``"block{i}"`` (0-based block index), each (B, width, H/s, W/s)
    with ``s`` the patch size (or ``feature_stride`` when the map is resampled). The class token
    is dropped from the maps. The tower is ``self.tower.visual`` (open_clip's module).
    """

    @configurable
    def __init__(
        self,
        *,
        visual: nn.Module,
        out_indices: Sequence[int] = (),
        freeze: bool = True,
        value_only_last_block: bool = False,
        feature_stride: int = 0,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
    ):
        """
        Args:
            visual: open_clip ``VisionTransformer`` (``clip_model.visual``), owned by this module.
            out_indices: blocks whose outputs are returned; () = the last block.
            freeze: frozen tower (F-ViT, methods §3.8): no gradient, eval mode, ``no_grad``.
                False fine-tunes it (RO-ViT, methods §4.3).
            value_only_last_block: run the last block value-only (CLIPSelf, methods §3.1/3.8).
            feature_stride: stride of the returned maps; 0 = patch size. Otherwise the maps are
                resampled bilinearly from the patch grid to (H/stride, W/stride) (L/14 -> 16).
            window_size: > 0: window attention (in patches) in ``window_block_indexes``.
            window_block_indexes: blocks with window attention; the rest are global.
        """
        super().__init__()
        if not is_open_clip_vit(visual):
            raise TypeError(
                f"CLIPViT needs an open_clip VisionTransformer tower (ViT-B-16, ViT-L-14, "
                f"ovdet-tiny-vit, ...), got {type(visual).__name__}. open_clip's timm-based "
                "towers (EVA02-*) are not supported yet (README, 'CLIP backbones'); CLIP ResNets "
                "use build_clip_resnet_fpn_backbone."
            )
        self.tower = DenseCLIPViT(visual)
        num_layers = self.tower.num_layers
        out_indices = [int(i) for i in out_indices] or [num_layers - 1]
        out_indices = [i + num_layers if i < 0 else i for i in out_indices]
        bad = [i for i in out_indices if not 0 <= i < num_layers]
        if bad:
            raise ValueError(
                f"ViT out indices {bad} out of range for a {num_layers}-block tower "
                "(MODEL.OVD.BACKBONE.VIT_OUT_INDICES)."
            )
        bad = [i for i in window_block_indexes if not 0 <= int(i) < num_layers]
        if window_size > 0 and bad:
            raise ValueError(
                f"Window block indexes {bad} out of range for a {num_layers}-block tower "
                "(MODEL.OVD.BACKBONE.WINDOW_BLOCK_INDEXES)."
            )
        if window_size < 0:
            raise ValueError(f"WINDOW_SIZE must be >= 0, got {window_size}.")
        self.out_indices: List[int] = sorted(set(out_indices))
        self.freeze = bool(freeze)
        self.value_only_last_block = bool(value_only_last_block)
        self.window_size = int(window_size)
        self.window_block_indexes = tuple(int(i) for i in window_block_indexes)
        ph, pw = self.tower.patch_size
        if ph != pw:
            raise ValueError(f"Non-square patches {ph}x{pw} are not supported.")
        self.patch_size = ph
        self.feature_stride = int(feature_stride) or ph
        if self.freeze:
            freeze_module(self.tower)
        self._out_features = [f"block{i}" for i in self.out_indices]
        self._out_feature_channels = {f: self.tower.width for f in self._out_features}
        self._out_feature_strides = {f: self.feature_stride for f in self._out_features}
        # set by expose_tower_map(): also return the last block's patch map
        self.tower_map_exposed = False
        logger.info(
            "CLIPViT %s: patch %d, %d blocks, width %d, taps %s, stride %d, %s%s%s",
            getattr(visual, "ovdet_model_name", "?"),
            ph,
            num_layers,
            self.tower.width,
            self.out_indices,
            self.feature_stride,
            "frozen" if self.freeze else "trainable",
            ", value-only last block" if self.value_only_last_block else "",
            (
                f", window {self.window_size} in blocks {list(self.window_block_indexes)}"
                if self.window_size
                else ""
            ),
        )

    @classmethod
    def from_config(cls, cfg):
        name, pretrained = clip_backbone_source(cfg)
        visual = build_clip_visual(name, pretrained)
        if not is_open_clip_vit(visual):
            raise ValueError(
                f"MODEL.BACKBONE.NAME asks for a CLIP ViT backbone, but CLIP model {name!r} has a "
                f"{type(visual).__name__} vision tower. Use an open_clip ViT (ViT-B-16, ViT-L-14, "
                "ovdet-tiny-vit, ...) or MODEL.BACKBONE.NAME 'build_clip_resnet_fpn_backbone' for "
                "RN* models. (EVA02-* timm towers are not supported yet.)"
            )
        check_clip_pixel_normalization(cfg, name, pretrained)
        bb = cfg.MODEL.OVD.BACKBONE
        return {
            "visual": visual,
            "out_indices": tuple(bb.VIT_OUT_INDICES),
            "freeze": bb.FREEZE,
            "value_only_last_block": bb.VIT_VALUE_ONLY_LAST_BLOCK,
            "feature_stride": bb.VIT_FEATURE_STRIDE,
            "window_size": bb.WINDOW_SIZE,
            "window_block_indexes": tuple(bb.WINDOW_BLOCK_INDEXES),
        }

    @property
    def visual(self) -> nn.Module:
        """The open_clip ``VisionTransformer``."""
        return self.tower.visual

    @property
    def num_layers(self) -> int:
        return self.tower.num_layers

    @property
    def size_divisibility(self) -> int:
        # the patch grid, and the resampled grid when feature_stride differs from the patch
        return lcm(self.patch_size, self.feature_stride)

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self.size_divisibility}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.tower.eval()
        return self

    def expose_tower_map(self) -> None:
        """Also return the last block's patch map (B, width, H/patch, W/patch), before any
        resampling, under ``CLIP_TOWER_FEATURE``, so that a VLM region scorer reads it instead of
        running the tower again (the F-ViT backbone returns its dense map at test time)."""
        self.tower_map_exposed = True

    def _forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        H, W = x.shape[-2:]
        tokens, grid = self.tower.embed(x)
        last = self.num_layers - 1
        # later blocks feed nothing, unless the last block's map is exposed
        stop_at = last if self.tower_map_exposed else max(self.out_indices)
        last_tokens, taps = self.tower.run_blocks(
            tokens,
            grid,
            out_indices=self.out_indices,
            value_only_last=self.value_only_last_block,
            window_size=self.window_size,
            window_block_indexes=self.window_block_indexes,
            stop_at=stop_at,
        )
        outputs = {}
        if self.tower_map_exposed:
            outputs[CLIP_TOWER_FEATURE] = DenseCLIPViT.tokens_to_map(last_tokens, grid)
        for name, t in zip(self._out_features, taps):
            fmap = DenseCLIPViT.tokens_to_map(t, grid)
            if self.feature_stride != self.patch_size:
                size = (H // self.feature_stride, W // self.feature_stride)
                fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
            outputs[name] = fmap
        return outputs

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (B, 3, H, W) CLIP-normalised images, H and W multiples of ``size_divisibility``.
        Returns:
            dict ``"block{i}"`` -> (B, width, H/stride, W/stride) (+ ``CLIP_TOWER_FEATURE`` when
            :meth:`expose_tower_map` was called).
        """
        if self.freeze:
            with torch.no_grad():
                return self._forward(x)
        return self._forward(x)


class CLIPSimpleFeaturePyramid(SimpleFeaturePyramid):
    """Detectron2's ``SimpleFeaturePyramid`` (ViTDet), each level fed by its own ViT block.

    Level ``k`` (scale ``scale_factors[k]``) takes ``in_features[k]``: F-ViT's layout (blocks
    [3, 5, 7, 11] -> 4x up, 2x up, identity, 2x down, methods §3.8). A single in-feature feeds every
    level (ViTDet / RO-ViT's ``SimpleFpnV2``, methods §4.3). Outputs ``p<log2 stride>``, plus one
    max-pooled level from ``top_block``.
    """

    def __init__(
        self,
        net: Backbone,
        in_features: Sequence[str],
        out_channels: int,
        scale_factors: Sequence[float],
        top_block: Optional[nn.Module] = None,
        norm: str = "LN",
        square_pad: int = 0,
    ):
        """
        Args:
            net: the ViT backbone (:class:`CLIPViT`).
            in_features: one feature name per scale factor, or a single name for all.
            out_channels, scale_factors, top_block, norm, square_pad: as ``SimpleFeaturePyramid``.
        """
        in_features = list(in_features)
        scale_factors = [float(s) for s in scale_factors]
        if len(in_features) == 1:
            in_features = in_features * len(scale_factors)
        if len(in_features) != len(scale_factors):
            raise ValueError(
                f"{len(in_features)} ViT taps {in_features} for {len(scale_factors)} pyramid "
                f"levels {scale_factors}: give one tap per level or a single tap "
                "(MODEL.OVD.BACKBONE.VIT_OUT_INDICES vs SFP_SCALE_FACTORS)."
            )
        shapes = net.output_shape()
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"Pyramid inputs {missing} are not outputs of {type(net).__name__}.")
        unsupported = [s for s in scale_factors if s not in (4.0, 2.0, 1.0, 0.5)]
        if unsupported:
            raise ValueError(
                f"SFP scale factors {unsupported} unsupported; use values among 4, 2, 1, 0.5 "
                "(MODEL.OVD.BACKBONE.SFP_SCALE_FACTORS)."
            )
        super().__init__(
            net,
            in_features[-1],
            out_channels,
            scale_factors,
            top_block=top_block,
            norm=norm,
            square_pad=square_pad,
        )
        self.in_features = in_features
        self._size_divisibility = lcm(self._size_divisibility, net.size_divisibility)

    @property
    def size_divisibility(self) -> int:
        return self._size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return {"size_divisibility": self._size_divisibility, "square_size": self._square_pad}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (B, 3, H, W), H and W multiples of ``size_divisibility``.
        Returns:
            dict ``p<stage>`` -> (B, out_channels, H/2^stage, W/2^stage), high to low resolution.
        """
        bottom_up = self.net(x)
        results = [stage(bottom_up[f]) for stage, f in zip(self.stages, self.in_features)]
        if self.top_block is not None:
            top_in = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_in))
        outputs = dict(zip(self._out_features, results))
        if CLIP_TOWER_FEATURE in bottom_up:  # the tower's own map, for the VLM scorer
            outputs[CLIP_TOWER_FEATURE] = bottom_up[CLIP_TOWER_FEATURE]
        return outputs


@BACKBONE_REGISTRY.register()
def build_clip_vit_sfp_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """F-ViT / RO-ViT backbone: CLIP ViT + simple feature pyramid (+ max-pooled top level).

    ``MODEL.OVD.BACKBONE.*`` picks the tower, taps, freezing, value-only last block, window
    attention and scale factors; the pyramid width is ``MODEL.FPN.OUT_CHANNELS``.
    """
    _check_input_channels(input_shape)
    bb = cfg.MODEL.OVD.BACKBONE
    net = CLIPViT(cfg)
    taps = [int(i) % net.num_layers for i in bb.VIT_OUT_INDICES] or [net.num_layers - 1]
    names = [f"block{i}" for i in taps]
    scale_factors = list(bb.SFP_SCALE_FACTORS)
    coarsest = max(int(net.feature_stride / s) for s in scale_factors)
    top_in = f"p{int(round(math.log2(coarsest)))}"
    return CLIPSimpleFeaturePyramid(
        net,
        in_features=names,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        scale_factors=scale_factors,
        top_block=_MaxPoolTop(top_in),
        norm=bb.SFP_NORM,
        square_pad=bb.SFP_SQUARE_PAD,
    )


class _MaxPoolTop(LastLevelMaxPool):
    """``LastLevelMaxPool`` reading the pyramid's coarsest level (named after its stride)."""

    def __init__(self, in_feature: str):
        super().__init__()
        self.in_feature = in_feature
