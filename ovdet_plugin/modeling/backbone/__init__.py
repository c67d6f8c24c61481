"""CLIP vision backbones registered in Detectron2's ``BACKBONE_REGISTRY``.

- ``build_clip_resnet_fpn_backbone``: frozen CLIP ResNet + FPN P2-P6 (F-VLM, methods §2.1).
- ``build_clip_resnet_backbone``: the CLIP ResNet bottom-up alone.
- ``build_clip_vit_sfp_backbone``: CLIP ViT + simple feature pyramid (F-ViT 3.8, RO-ViT 4.3).
"""

from .clip_resnet import (
    CLIPResNet,
    build_clip_resnet_backbone,
    build_clip_resnet_fpn_backbone,
    is_open_clip_resnet,
)
from .clip_vit import CLIPSimpleFeaturePyramid, CLIPViT, build_clip_vit_sfp_backbone
from .utils import (
    CLIP_PIXEL_MEAN,
    CLIP_PIXEL_STD,
    build_clip_visual,
    clip_backbone_source,
    get_vit_lr_decay_rate,
)

__all__ = [
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "CLIPResNet",
    "CLIPSimpleFeaturePyramid",
    "CLIPViT",
    "build_clip_resnet_backbone",
    "build_clip_resnet_fpn_backbone",
    "build_clip_visual",
    "build_clip_vit_sfp_backbone",
    "clip_backbone_source",
    "get_vit_lr_decay_rate",
    "is_open_clip_resnet",
]
