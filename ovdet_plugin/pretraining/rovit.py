"""RO-ViT image-text pretraining model (methods §4.1-4.2): an open_clip model whose image
encoder applies the cropped positional embedding in training, pools by class token / attention
pool or by global average pooling, and is trained with the focal or the softmax contrastive loss.
"""

import logging
import math
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from ..clip.dense import interpolate_pos_embed, is_open_clip_vit
from ..clip.loading import build_clip_model, clip_image_size, get_clip_tokenizer
from .contrastive_losses import (
    caption_ids,
    focal_contrastive_loss,
    gather_features,
    gather_ids,
    multipositive_softmax_loss,
    softmax_contrastive_loss,
)
from .cropped_pos_embed import CroppedPosEmbed

__all__ = [
    "RegionAwareCLIP",
    "LOSSES",
    "POOLINGS",
    "export_state_dict",
    "init_logit_scale_and_bias",
]

logger = logging.getLogger(__name__)

LOSSES = ("focal", "softmax", "multipos")
POOLINGS = ("cls", "gap")


def init_logit_scale_and_bias(clip_model: nn.Module, scale: float, bias: float) -> None:
    """Set the learnable logit scale to ``scale`` (when > 0) and add a learnable scalar
    ``logit_bias`` starting at ``bias`` (when not 0; SigLIP's init is scale 10, bias -10)."""
    if scale < 0:
        raise ValueError(f"MODEL.OVD.ROVIT.LOGIT_SCALE_INIT must be >= 0 (0: keep), got {scale}.")
    if scale > 0:
        with torch.no_grad():
            clip_model.logit_scale.fill_(math.log(scale))
    if bias:
        # open_clip's CLIP architectures hold ``logit_bias = None``: the bias added here is then
        # for training only and :func:`export_state_dict` leaves it out, so that the exported
        # weights load into the architecture (build_clip_model) again.
        training_only = getattr(clip_model, "logit_bias", None) is None
        clip_model.logit_bias = nn.Parameter(torch.tensor(float(bias)))
        clip_model._ovdet_training_only_logit_bias = training_only


def export_state_dict(clip_model: nn.Module) -> Dict[str, torch.Tensor]:
    """The open_clip state dict to export (on the CPU), without a training-only ``logit_bias``
    (see :func:`init_logit_scale_and_bias`)."""
    state = {k: v.detach().cpu() for k, v in clip_model.state_dict().items()}
    if getattr(clip_model, "_ovdet_training_only_logit_bias", False):
        state.pop("logit_bias", None)
    return state


class RegionAwareCLIP(nn.Module):
    """open_clip model + RO-ViT training options; ``forward(batch)`` returns the loss dict.

    Image encoder (open_clip ``VisionTransformer`` modules, called in open_clip's order:
    ``conv1`` -> class token -> positional embedding -> ``patch_dropout`` -> ``ln_pre`` ->
    ``transformer`` -> pooling -> ``proj``), with two changes:

    - positional embedding: CPE (:class:`CroppedPosEmbed`, one crop box per image) when
      ``self.training`` and CPE is on; otherwise the tower's embedding, bicubically interpolated
      when the input grid is not the native one (the detection-time rule, methods §4.1);
    - pooling "gap": the mean of the patch tokens (class token excluded) after the last block,
      then ``ln_post`` and ``proj`` (RO-ViT pools by global average pooling, methods §4.3; LN
      after the mean as open_clip's ``final_ln_after_pool``). "cls" keeps the tower's own pooling
      (class token or attention pool, ``ln_post`` first).
    """

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        tokenizer=None,
        cpe: Optional[CroppedPosEmbed] = None,
        pooling: str = "cls",
        loss: str = "focal",
        focal_alpha: float = 0.5,
        focal_gamma: float = 1.0,
        focal_normalizer: str = "batch",
        gather: bool = True,
    ):
        """
        Args:
            clip_model: an open_clip ``CLIP`` model.
            tokenizer: open_clip tokenizer (captions -> (B, 77) tokens); needed by ``forward``.
            cpe: cropped positional embedding settings, or None for plain CLIP pretraining.
            pooling: "cls" (the tower's own pooling) or "gap" (global average pooling).
            loss: "focal" (RO-ViT, methods §4.2), "softmax" (CLIP's cross-entropy) or "multipos"
                (softmax where every pair with the same caption string is a positive; for
                caption sets with repeats, see ``multipositive_softmax_loss``).
            focal_alpha, focal_gamma: the focal loss's alpha and gamma (0.5, 1.0).
            focal_normalizer: "batch" (divide the summed loss by the global batch size) or
                "none" (the plain sum, ``loss_normalizing_factor`` unset).
            gather: compute the loss over the batch of every DDP rank (all-gathered features).
        """
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"Unknown contrastive loss {loss!r} (MODEL.OVD.ROVIT.LOSS): {LOSSES}.")
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r} (MODEL.OVD.ROVIT.POOLING): {POOLINGS}.")
        if focal_normalizer not in ("batch", "none"):
            raise ValueError(
                f"Unknown focal normaliser {focal_normalizer!r} (MODEL.OVD.ROVIT.FOCAL_NORMALIZER):"
                " 'batch' or 'none'."
            )
        visual = clip_model.visual
        if (cpe is not None or pooling == "gap") and not is_open_clip_vit(visual):
            raise TypeError(
                f"The cropped positional embedding and GAP pooling need an open_clip "
                f"VisionTransformer image tower, but {type(visual).__name__} was given. Use a ViT "
                "model (MODEL.OVD.CLIP.MODEL_NAME, e.g. ViT-B-16) or set MODEL.OVD.ROVIT.CPE False "
                "and MODEL.OVD.ROVIT.POOLING 'cls'."
            )
        if pooling == "gap" and visual.proj is None:
            raise ValueError("GAP pooling needs the tower's projection (visual.proj is None).")
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.cpe = cpe
        self.pooling = pooling
        self.loss = loss
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)
        self.focal_normalizer = focal_normalizer
        self.gather = gather

    @classmethod
    def from_config(cls, cfg):
        r = cfg.MODEL.OVD.ROVIT
        name = cfg.MODEL.OVD.CLIP.MODEL_NAME
        cpe = None
        if r.CPE_CROP_CONVENTION not in ("official", "detectron2"):
            raise ValueError(
                "MODEL.OVD.ROVIT.CPE_CROP_CONVENTION must be 'official' or 'detectron2', got "
                f"{r.CPE_CROP_CONVENTION!r}."
            )
        if r.CPE:
            aligned = r.CPE_CROP_CONVENTION == "detectron2"
            cpe = CroppedPosEmbed(
                r.UP_POS_EMB_SIZE, tuple(r.CROP_SCALE), tuple(r.CROP_ASPECT), aligned=aligned
            )
        clip_model = build_clip_model(name, cfg.MODEL.OVD.CLIP.PRETRAINED)
        init_logit_scale_and_bias(clip_model, r.LOGIT_SCALE_INIT, r.LOGIT_BIAS_INIT)
        return {
            "clip_model": clip_model,
            "tokenizer": get_clip_tokenizer(name),
            "cpe": cpe,
            "pooling": r.POOLING,
            "loss": r.LOSS,
            "focal_alpha": r.FOCAL_ALPHA,
            "focal_gamma": r.FOCAL_GAMMA,
            "focal_normalizer": r.FOCAL_NORMALIZER,
            "gather": r.GATHER_FEATURES,
        }

    @property
    def image_size(self) -> Tuple[int, int]:
        return clip_image_size(self.clip)

    # ------------------------------------------------------------------ encoders
    def positional_embedding(self, grid: Tuple[int, int], batch: int) -> torch.Tensor:
        """The positional embedding added to the tokens: (B, 1 + h*w, C) with CPE (training),
        else (1 + h*w, C) (interpolated to ``grid`` when it is not the native grid)."""
        visual = self.clip.visual
        native = tuple(int(g) for g in visual.grid_size)
        if self.training and self.cpe is not None:
            return self.cpe(visual.positional_embedding, native, grid, batch)
        return interpolate_pos_embed(visual.positional_embedding, native, grid)

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """
        Args:
            images: (B, 3, H, W) CLIP-normalised images (H, W multiples of the patch size).
        Returns:
            (B, D) image embeddings (L2-normalised when ``normalize``).
        """
        visual = self.clip.visual
        if not is_open_clip_vit(visual):  # ResNet / timm towers: open_clip unchanged
            feats = self.clip.encode_image(images)
            return F.normalize(feats, dim=-1) if normalize else feats
        x = visual.conv1(images)  # (B, C, h, w)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        x = x + self.positional_embedding(grid, x.shape[0]).to(x.dtype)
        x = visual.patch_dropout(x)
        x = visual.ln_pre(x)
        x = visual.transformer(x)
        if self.pooling == "gap":
            # RO-ViT global average pooling of the patch tokens (methods §4.3), LN after the mean
            pooled = visual.ln_post(x[:, 1:].mean(dim=1))
        else:
            pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def encode_text(self, captions: Union[Sequence[str], torch.Tensor], normalize: bool = True):
        """Captions (strings, tokenised here) or (B, L) tokens -> (B, D) text embeddings."""
        if not isinstance(captions, torch.Tensor):
            if self.tokenizer is None:
                raise ValueError("RegionAwareCLIP has no tokenizer; pass token tensors instead.")
            captions = self.tokenizer(list(captions))
        tokens = captions.to(self.clip.logit_scale.device)
        return self.clip.encode_text(tokens, normalize=normalize)

    # ------------------------------------------------------------------ training
    def compute_loss(
        self,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        ids: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """The contrastive loss of L2-normalised (B, D) pairs (gathered over ranks if enabled).
        ``ids``: (B,) caption ids (:func:`caption_ids`), needed by the "multipos" loss."""
        if self.loss == "multipos" and ids is None:
            raise ValueError("The 'multipos' loss needs the caption ids (caption_ids(captions)).")
        if self.gather:
            image_features, text_features = gather_features(image_features, text_features)
            ids = gather_ids(ids) if ids is not None else None
        # open_clip clamps the learned temperature at 100 (logit_scale = ln 100)
        scale = self.clip.logit_scale.exp().clamp(max=100.0)
        bias = getattr(self.clip, "logit_bias", None)
        if self.loss == "focal":
            norm = float(image_features.shape[0]) if self.focal_normalizer == "batch" else None
            loss = focal_contrastive_loss(
                image_features,
                text_features,
                scale,
                bias,
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
                normalizer=norm,
            )
            return {"loss_focal_contrastive": loss}
        if self.loss == "multipos":
            loss = multipositive_softmax_loss(image_features, text_features, scale, ids)
            return {"loss_contrastive": loss}
        return {"loss_contrastive": softmax_contrastive_loss(image_features, text_features, scale)}

    def forward(self, batch: Dict) -> Dict[str, torch.Tensor]:
        """
        Args:
            batch: {"images": (B, 3, H, W) CLIP-normalised, "captions": B strings or (B, L)}.
        Returns:
            {"loss_focal_contrastive" or "loss_contrastive": scalar}.
        """
        device = self.clip.logit_scale.device
        images = batch["images"].to(device)
        image_features = self.encode_image(images)
        text_features = self.encode_text(batch["captions"])
        ids = None
        if self.loss == "multipos":
            if isinstance(batch["captions"], torch.Tensor):
                raise ValueError("The 'multipos' loss needs caption strings, not token tensors.")
            ids = caption_ids(batch["captions"], device=device)
        return self.compute_loss(image_features, text_features, ids)
