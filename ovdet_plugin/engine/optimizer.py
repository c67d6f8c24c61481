"""The plugin's one optimizer builder, shared by the detection trainer (``OVDTrainer``) and the
VLM pretraining loop (RO-ViT, CLIPSelf).

Both take their settings from the same keys: ``SOLVER.BASE_LR`` / ``WEIGHT_DECAY`` / ``MOMENTUM``
/ ``NESTEROV``, Detectron2's gradient clipping ``SOLVER.CLIP_GRADIENTS``, and the AdamW betas
``MODEL.OVD.SOLVER.BETAS`` (the former pretraining key ``MODEL.OVD.PRETRAIN.BETAS`` is a renamed
key: a YAML that still sets it fails with a message naming the new one). They differ only in how
the parameters are grouped:

- :func:`detection_param_groups`: Detectron2's per-group rules (norm / bias weight decay, bias lr
  factor), no decay on the learnable temperatures (F-VLM, methods §2.2) and layer-wise lr decay for
  a fine-tuned CLIP ViT backbone (``MODEL.OVD.BACKBONE.LR_DECAY_RATE``, RO-ViT / ViTDet);
- :func:`clip_param_groups`: open_clip's rule, weight decay on matrices only, none on gains,
  biases and the temperature (CLIPSelf / open_clip, methods §3.7).
"""

from functools import partial
from typing import Dict, List, Optional

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from torch import nn

from ..modeling.backbone.utils import get_vit_lr_decay_rate

__all__ = ["build_ovdet_optimizer", "clip_param_groups", "detection_param_groups"]

# Parameters never weight-decayed: the learnable temperatures (F-VLM excludes t, methods §2.2).
_NO_DECAY = {"inverse_temperature": {"weight_decay": 0.0}, "logit_scale": {"weight_decay": 0.0}}


def _vit_depth(model: nn.Module) -> int:
    for module in model.modules():
        resblocks = getattr(getattr(module, "transformer", None), "resblocks", None)
        if resblocks is not None and hasattr(module, "conv1"):
            return len(resblocks)
    return 0


def detection_param_groups(cfg, model: nn.Module) -> List[Dict]:
    """Detectron2's ``get_default_optimizer_params`` over the trainable parameters of a detector,
    with the temperatures undecayed and ViT layer-wise lr decay (see the module doc)."""
    lr_factor_func = None
    rate = cfg.MODEL.OVD.BACKBONE.LR_DECAY_RATE
    depth = _vit_depth(model)
    if rate != 1.0 and depth:
        lr_factor_func = partial(get_vit_lr_decay_rate, lr_decay_rate=rate, num_layers=depth)
    return get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        lr_factor_func=lr_factor_func,
        # a fresh copy: Detectron2 adds its "bias" entry to the dict it is given, and a shared one
        # then leaks that entry into the next optimizer built in the process (or makes it raise
        # "Conflicting overrides for 'bias'"), as the GPU check's second build of a ViLD config did
        overrides={name: dict(values) for name, values in _NO_DECAY.items()},
    )


def clip_param_groups(cfg, model: nn.Module) -> List[Dict]:
    """Two groups of a CLIP model's trainable parameters: matrices with weight decay
    ``SOLVER.WEIGHT_DECAY``, and gains, biases, 1-D entries, ``logit_scale`` / ``logit_bias``
    without (CLIPSelf / open_clip, methods §3.7). Empty groups are dropped; raise when nothing
    trains."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "logit_scale" in name or "logit_bias" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    if not decay and not no_decay:
        raise ValueError("No trainable parameter: check the frozen-parts settings of the config.")
    groups = [
        {"params": decay, "weight_decay": cfg.SOLVER.WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_ovdet_optimizer(
    cfg,
    model: nn.Module,
    *,
    optimizer: Optional[str] = None,
    param_groups: Optional[List[Dict]] = None,
) -> torch.optim.Optimizer:
    """SGD or AdamW at ``SOLVER.BASE_LR`` with Detectron2's gradient clipping.

    Args:
        cfg: the full config.
        model: the (unwrapped) model.
        optimizer: "SGD" or "AdamW"; None means ``MODEL.OVD.SOLVER.OPTIMIZER``.
        param_groups: parameter groups; None means :func:`detection_param_groups`.
    Returns:
        SGD (momentum ``SOLVER.MOMENTUM``, ``SOLVER.NESTEROV``) or AdamW (betas
        ``MODEL.OVD.SOLVER.BETAS``); ``SOLVER.WEIGHT_DECAY`` for groups that set none; torch's
        fused kernel with ``MODEL.OVD.SOLVER.FUSED``.
    """
    name = (optimizer or cfg.MODEL.OVD.SOLVER.OPTIMIZER).upper()
    if name == "SGD":
        opt_class = torch.optim.SGD
        kwargs = {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    elif name == "ADAMW":
        opt_class = torch.optim.AdamW
        kwargs = {"betas": tuple(cfg.MODEL.OVD.SOLVER.BETAS)}
    else:
        raise ValueError(f"MODEL.OVD.SOLVER.OPTIMIZER must be 'SGD' or 'AdamW', got {name!r}")
    if cfg.MODEL.OVD.SOLVER.FUSED:
        kwargs["fused"] = True  # torch's one-kernel update (CPU and CUDA)
    if param_groups is None:
        param_groups = detection_param_groups(cfg, model)
    return maybe_add_gradient_clipping(cfg, opt_class)(
        param_groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, **kwargs
    )
