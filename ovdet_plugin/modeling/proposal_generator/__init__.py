"""Proposal generators registered in Detectron2's ``PROPOSAL_GENERATOR_REGISTRY``:
"CenternessRPN" (RO-ViT / OLN novel-object proposals, methods §4.3)."""

from .centerness_rpn import (  # noqa: F401
    CenternessRPN,
    LRTBTransform,
    centerness_targets,
    iou_loss,
)

__all__ = [
    "CenternessRPN",
    "LRTBTransform",
    "centerness_targets",
    "iou_loss",
]
