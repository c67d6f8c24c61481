"""Shared helpers of the CLIP backbones: building the vision tower from a config, freezing it,
the check of CLIP's pixel normalisation, and the layer-wise learning-rate decay of a fine-tuned ViT.
"""

import logging
import math
import re
from typing import Tuple

import numpy as np
from torch import nn

from ...clip.constants import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from ...clip.loading import build_clip_model

__all__ = [
    "CLIP_TOWER_FEATURE",
    "CLIP_PIXEL_MEAN",
    "CLIP_PIXEL_STD",
    "build_clip_visual",
    "check_clip_pixel_normalization",
    "clip_backbone_source",
    "freeze_module",
    "get_vit_lr_decay_rate",
    "lcm",
]

logger = logging.getLogger(__name__)


# Key of the extra backbone output that carries the frozen CLIP tower's own map (CLIP ResNet: C5
# before the attention pool; CLIP ViT: the last block's patch map), when a VLM region scorer
# reads it instead of running the tower a second time (F-VLM's one frozen backbone).
CLIP_TOWER_FEATURE = "clip_tower"


def lcm(a: int, b: int) -> int:
    """Least common multiple, treating 0 as "no constraint"."""
    a, b = int(a), int(b)
    if not a or not b:
        return max(a, b)
    return a * b // math.gcd(a, b)


def clip_backbone_source(cfg) -> Tuple[str, str]:
    """(model_name, pretrained) of the vision tower named by the config.

    ``MODEL.OVD.BACKBONE.CLIP_MODEL_NAME`` "" means the text model ``MODEL.OVD.CLIP.MODEL_NAME``
    and then ``BACKBONE.PRETRAINED`` "" means ``MODEL.OVD.CLIP.PRETRAINED`` (one CLIP for both
    towers, the usual case); an explicit ``CLIP_MODEL_NAME`` takes ``BACKBONE.PRETRAINED`` as is.
    """
    bb = cfg.MODEL.OVD.BACKBONE
    name = bb.CLIP_MODEL_NAME or cfg.MODEL.OVD.CLIP.MODEL_NAME
    pretrained = bb.PRETRAINED
    if not bb.CLIP_MODEL_NAME and not pretrained:
        pretrained = cfg.MODEL.OVD.CLIP.PRETRAINED
    return name, pretrained


def build_clip_visual(model_name: str, pretrained: str = "") -> nn.Module:
    """The vision tower (``model.visual``) of an open_clip model; the text tower is dropped.

    Errors of :func:`ovdet_plugin.clip.build_clip_model` propagate (unknown names, missing files,
    checkpoints whose keys do not match the architecture list the first missing/unexpected keys).
    """
    model = build_clip_model(model_name, pretrained)
    visual = model.visual
    visual.ovdet_model_name = model_name
    visual.ovdet_pretrained = pretrained
    # the model's learned softmax scale, exp(logit_scale) (100 for OpenAI CLIP): a VLM
    # temperature of 0 means this one (MODEL.OVD.FUSION.VLM_TEMPERATURE)
    visual.ovdet_logit_scale = float(model.logit_scale.detach().exp())
    del model
    return visual


def check_clip_pixel_normalization(cfg, model_name: str, pretrained: str) -> None:
    """Warn when pretrained CLIP weights are fed images that are not CLIP-normalised RGB."""
    if not pretrained:
        return
    mean_ok = np.allclose(cfg.MODEL.PIXEL_MEAN, CLIP_PIXEL_MEAN, atol=1e-3)
    std_ok = np.allclose(cfg.MODEL.PIXEL_STD, CLIP_PIXEL_STD, atol=1e-3)
    if not (mean_ok and std_ok and cfg.INPUT.FORMAT == "RGB"):
        logger.warning(
            "CLIP backbone %s (%s) expects CLIP-normalised RGB input, but the config has "
            "INPUT.FORMAT=%s PIXEL_MEAN=%s PIXEL_STD=%s. Set INPUT.FORMAT: RGB, PIXEL_MEAN: %s, "
            "PIXEL_STD: %s (configs/Base-CLIP-*.yaml do).",
            model_name,
            pretrained,
            cfg.INPUT.FORMAT,
            list(cfg.MODEL.PIXEL_MEAN),
            list(cfg.MODEL.PIXEL_STD),
            [round(v, 4) for v in CLIP_PIXEL_MEAN],
            [round(v, 4) for v in CLIP_PIXEL_STD],
        )


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients to every parameter of ``module`` and put it in eval mode."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


_BLOCK_RE = re.compile(r"\.transformer\.resblocks\.(\d+)\.")
_EMBED_KEYS = (".conv1.", ".class_embedding", ".positional_embedding", ".ln_pre.")


def get_vit_lr_decay_rate(name: str, lr_decay_rate: float = 1.0, num_layers: int = 12) -> float:
    """Layer-wise learning-rate factor of a parameter of a fine-tuned CLIP ViT backbone.

    ViTDet / BEiT rule (used for RO-ViT's fine-tuned backbone, methods §4.3): block ``i`` gets
    ``rate ** (L - i)``, the patch / class / positional embeddings and ``ln_pre`` get
    ``rate ** (L + 1)``, everything else (pyramid, heads, ``ln_post``) 1. Only names of the CLIP
    tower inside the backbone (``backbone.....visual.``) are decayed.

    Use it with Detectron2's optimizer helper::

        from functools import partial
        from detectron2.solver.build import get_default_optimizer_params
        params = get_default_optimizer_params(model, base_lr=..., weight_decay_norm=0.0,
            lr_factor_func=partial(get_vit_lr_decay_rate,
                                   lr_decay_rate=cfg.MODEL.OVD.BACKBONE.LR_DECAY_RATE,
                                   num_layers=num_blocks))

    Args:
        name: full parameter name, e.g.
            ``backbone.net.tower.visual.transformer.resblocks.3.mlp.c_fc.weight``.
        lr_decay_rate: the decay rate (1.0 = no decay; ViTDet-B uses 0.7).
        num_layers: number of transformer blocks L.
    Returns:
        the factor multiplying the base learning rate.
    """
    if not name.startswith("backbone") or ".visual." not in name:
        return 1.0
    layer_id = num_layers + 1
    m = _BLOCK_RE.search(name)
    if m is not None:
        layer_id = int(m.group(1)) + 1
    elif any(key in name for key in _EMBED_KEYS):
        layer_id = 0
    return lr_decay_rate ** (num_layers + 1 - layer_id)
