"""Region-aware training of the VLM: RO-ViT image-text pretraining with the cropped
positional embedding and the focal contrastive loss (methods §4.1-4.2), and CLIPSelf
self-distillation of a CLIP ViT's dense features (methods §3.1-3.7). Both run through
Detectron2's ``launch`` and the shared training loop of :mod:`.trainer`."""

from .contrastive_losses import (  # noqa: F401
    focal_contrastive_loss,
    gather_features,
    sigmoid_focal_matrix_loss,
    softmax_contrastive_loss,
)
from .cropped_pos_embed import (  # noqa: F401
    CroppedPosEmbed,
    crop_and_resize_pos_embed,
    cropped_positional_embedding,
    sample_crop_boxes,
    upsample_pos_embed,
)
from .rovit import RegionAwareCLIP  # noqa: F401

__all__ = [
    "CroppedPosEmbed",
    "RegionAwareCLIP",
    "crop_and_resize_pos_embed",
    "cropped_positional_embedding",
    "focal_contrastive_loss",
    "gather_features",
    "sample_crop_boxes",
    "sigmoid_focal_matrix_loss",
    "softmax_contrastive_loss",
    "upsample_pos_embed",
]
