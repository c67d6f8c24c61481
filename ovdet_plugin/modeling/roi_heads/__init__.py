"""Open-vocabulary ROI heads (registered in Detectron2's ROI_HEADS_REGISTRY)."""

from .fusion import (  # noqa: F401
    FUSION_RULE_REGISTRY,
    fvit,
    fvlm,
    get_fusion_rule,
    objectness_weighting,
    vild_ensemble,
)
from .ov_predictor import OVFastRCNNOutputLayers, TextClassifier  # noqa: F401
from .ov_roi_heads import OVROIHeads, build_roi_heads_with_backbone  # noqa: F401
from .vild import ViLDROIHeads, vild_distillation_loss  # noqa: F401
