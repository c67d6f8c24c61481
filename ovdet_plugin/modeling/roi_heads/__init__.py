"""Open-vocabulary ROI heads (registered in Detectron2's ROI_HEADS_REGISTRY)."""

from .fusion import fvit_fusion, fvlm_fusion, objectness_weighting, vild_ensemble  # noqa: F401
from .ov_predictor import OVFastRCNNOutputLayers, TextClassifier  # noqa: F401
from .ov_roi_heads import OVROIHeads  # noqa: F401
from .vild import ViLDROIHeads, vild_distillation_loss  # noqa: F401
