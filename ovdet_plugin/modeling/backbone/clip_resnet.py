"""Frozen CLIP ResNet (open_clip ``ModifiedResNet``) as a Detectron2 backbone, with an FPN on top.

F-VLM (methods §2.1): the OpenAI CLIP ResNet (RN50, RN50x4, RN50x16, RN50x64) is frozen
(``train_vision_model=False``; BN uses its running averages), its stages C2-C5 feed a standard FPN
with levels P2-P6. The CLIP tower is open_clip's module, unchanged: this file only converts its
BatchNorm layers to :class:`detectron2.layers.FrozenBatchNorm2d`, taps its stages and freezes it.
The tower keeps its attention pool (unused here), so the F-VLM VLM scorer can share it
(:mod:`ovdet_plugin.modeling.vlm_scorers`).

Input: Detectron2 normalises images with ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``; for CLIP weights
these must be CLIP's constants x 255 in RGB order (:data:`.utils.CLIP_PIXEL_MEAN`), with
``INPUT.FORMAT: RGB``.
"""

import logging
from typing import Dict, Optional, Sequence

import torch
from detectron2.config import configurable
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from .utils import (
    CLIP_TOWER_FEATURE,
    build_clip_visual,
    check_clip_pixel_normalization,
    clip_backbone_source,
    freeze_module,
)

__all__ = [
    "CLIPResNet",
    "CLIPTowerFPN",
    "build_clip_resnet_backbone",
    "build_clip_resnet_fpn_backbone",
    "is_open_clip_resnet",
]

logger = logging.getLogger(__name__)

_STAGES = ("stem", "res2", "res3", "res4", "res5")
_STRIDES = {"stem": 4, "res2": 4, "res3": 8, "res4": 16, "res5": 32}


def is_open_clip_resnet(visual: nn.Module) -> bool:
    """True for open_clip's ``ModifiedResNet`` (the CLIP ResNet towers)."""
    from open_clip.modified_resnet import ModifiedResNet

    return isinstance(visual, ModifiedResNet)


class CLIPResNet(Backbone):
    """open_clip ``ModifiedResNet`` bottom-up: CLIP stem (3 convs + avg-pool), then res2..res5.

    Output channels for width ``w`` (64 for RN50): stem w (stride 4), res2 4w (4), res3 8w (8),
    res4 16w (16), res5 32w (32). BatchNorm is always frozen (running statistics); with
    ``freeze=True`` (default, F-VLM) no parameter gets a gradient, the tower stays in eval mode
    even in ``train()`` and runs under ``torch.no_grad``.
    """

    @configurable
    def __init__(
        self,
        *,
        visual: nn.Module,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        freeze: bool = True,
    ):
        """
        Args:
            visual: open_clip ``ModifiedResNet`` (``clip_model.visual``); owned by this module
                (its BatchNorms are replaced in place by ``FrozenBatchNorm2d``).
            out_features: stages to return, among "stem", "res2".."res5".
            freeze: frozen tower (F-VLM). False fine-tunes the convolutions (BN stays frozen).
        """
        super().__init__()
        if not is_open_clip_resnet(visual):
            raise TypeError(
                f"CLIPResNet needs an open_clip ModifiedResNet tower (RN50, RN50x4, ...), got "
                f"{type(visual).__name__}. For CLIP ViTs use build_clip_vit_sfp_backbone."
            )
        unknown = [f for f in out_features if f not in _STAGES]
        if unknown or not out_features:
            raise ValueError(
                f"CLIPResNet out_features {list(out_features)} must be a non-empty subset of "
                f"{list(_STAGES)} (MODEL.OVD.BACKBONE.OUT_FEATURES)."
            )
        # BN frozen: running averages, no statistics update (methods §2.1).
        self.visual = FrozenBatchNorm2d.convert_frozen_batchnorm(visual)
        self.freeze = bool(freeze)
        # The attention pool belongs to the VLM scorer, never to the detector's backbone.
        freeze_module(self.visual.attnpool)
        if self.freeze:
            freeze_module(self.visual)
        self._out_features = [f for f in _STAGES if f in out_features]
        width = self.visual.layer1[0].conv1.in_channels
        channels = {"stem": width, "res2": 4 * width, "res3": 8 * width}
        channels.update({"res4": 16 * width, "res5": 32 * width})
        self._out_feature_channels = {f: channels[f] for f in self._out_features}
        self._out_feature_strides = {f: _STRIDES[f] for f in self._out_features}
        # set by expose_tower_map(): also return that stage (C5 for F-VLM) under CLIP_TOWER_FEATURE
        self.tower_map_stage: Optional[str] = None
        logger.info(
            "CLIPResNet %s: width %d, outputs %s, %s",
            getattr(visual, "ovdet_model_name", "?"),
            width,
            self._out_features,
            "frozen" if self.freeze else "trainable (BN frozen)",
        )

    @classmethod
    def from_config(cls, cfg):
        name, pretrained = clip_backbone_source(cfg)
        visual = build_clip_visual(name, pretrained)
        if not is_open_clip_resnet(visual):
            raise ValueError(
                f"MODEL.BACKBONE.NAME asks for a CLIP ResNet backbone, but CLIP model {name!r} has "
                f"a {type(visual).__name__} vision tower. Use an RN* model (RN50, RN50x4, RN50x16, "
                "RN50x64, ovdet-tiny-rn) or MODEL.BACKBONE.NAME 'build_clip_vit_sfp_backbone'."
            )
        check_clip_pixel_normalization(cfg, name, pretrained)
        return {
            "visual": visual,
            "out_features": tuple(cfg.MODEL.OVD.BACKBONE.OUT_FEATURES),
            "freeze": cfg.MODEL.OVD.BACKBONE.FREEZE,
        }

    @property
    def size_divisibility(self) -> int:
        return 32

    def train(self, mode: bool = True):
        """A frozen tower stays in eval mode (F-VLM: BN with running averages)."""
        super().train(mode)
        if self.freeze:
            self.visual.eval()
        return self

    def expose_tower_map(self, stage: str = "res5") -> None:
        """Also return a stage's map under ``CLIP_TOWER_FEATURE``, so that a VLM region scorer
        reads the frozen tower's own features instead of running the tower again (F-VLM's single
        frozen backbone): C5 (the attention pool's input, stride 32) by default, or C4 ("res4")
        for a scorer that runs the last stage on each region's C4 crop."""
        if stage not in ("res4", "res5"):
            raise ValueError(f"expose_tower_map: stage must be 'res4' or 'res5', got {stage!r}")
        self.tower_map_stage = stage

    def _forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        v = self.visual
        outputs = {}
        wanted = len(self._out_features) + int(self.tower_map_stage is not None)
        x = v.stem(x)  # CLIP stem: 3 convs + 2x2 average pool (stride 4)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, layer in zip(
            ("res2", "res3", "res4", "res5"), (v.layer1, v.layer2, v.layer3, v.layer4)
        ):
            x = layer(x)
            if name in self._out_features:
                outputs[name] = x
            if name == self.tower_map_stage:
                outputs[CLIP_TOWER_FEATURE] = x
            if len(outputs) == wanted:
                break
        return outputs

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (B, 3, H, W) CLIP-normalised images.
        Returns:
            dict stage name -> (B, C, H/stride, W/stride) (+ ``CLIP_TOWER_FEATURE``: C5, or the
            stage asked for, when :meth:`expose_tower_map` was called).
        """
        if self.freeze:
            with torch.no_grad():
                return self._forward(x)
        return self._forward(x)


@BACKBONE_REGISTRY.register()
def build_clip_resnet_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """CLIP ResNet bottom-up alone (stages ``MODEL.OVD.BACKBONE.OUT_FEATURES``)."""
    _check_input_channels(input_shape)
    return CLIPResNet(cfg)


@BACKBONE_REGISTRY.register()
def build_clip_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """F-VLM backbone (methods §2.1): frozen CLIP ResNet C2-C5 + FPN P2-P6.

    The FPN is Detectron2's, configured as in ``build_resnet_fpn_backbone`` by
    ``MODEL.FPN.IN_FEATURES`` / ``OUT_CHANNELS`` / ``NORM`` / ``FUSE_TYPE``; P6 is a max-pool of P5.
    The FPN is trainable; only the CLIP tower is frozen.
    """
    _check_input_channels(input_shape)
    bottom_up = CLIPResNet(cfg)
    # MODEL.FPN.IN_FEATURES [] (Detectron2's default) means every res* stage of the bottom-up
    in_features = list(cfg.MODEL.FPN.IN_FEATURES) or [
        f for f in bottom_up.output_shape() if f.startswith("res")
    ]
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES {list(cfg.MODEL.FPN.IN_FEATURES)} asks for {missing}, which "
            f"MODEL.OVD.BACKBONE.OUT_FEATURES {list(cfg.MODEL.OVD.BACKBONE.OUT_FEATURES)} does "
            "not provide."
        )
    return CLIPTowerFPN(
        bottom_up=bottom_up,
        in_features=in_features,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


class CLIPTowerFPN(FPN):
    """Detectron2's ``FPN``, unchanged, whose output also carries the bottom-up's
    ``CLIP_TOWER_FEATURE`` map when the CLIP tower exposes it (see
    :meth:`CLIPResNet.expose_tower_map`). Other consumers (RPN, ROI heads) read their own
    ``IN_FEATURES`` and ignore the extra key."""

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        bottom_up: Dict[str, torch.Tensor] = {}
        hook = self.bottom_up.register_forward_hook(lambda _m, _i, out: bottom_up.update(out))
        try:
            results = super().forward(x)
        finally:
            hook.remove()
        if CLIP_TOWER_FEATURE in bottom_up:
            results[CLIP_TOWER_FEATURE] = bottom_up[CLIP_TOWER_FEATURE]
        return results


def _check_input_channels(input_shape: ShapeSpec) -> None:
    if input_shape.channels != 3:
        raise ValueError(
            f"CLIP backbones take 3-channel RGB images, got {input_shape.channels} channels "
            "(len(MODEL.PIXEL_MEAN))."
        )
