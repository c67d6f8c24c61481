"""ViLD ROI heads (Gu et al., ICLR 2022): the ViLD-image distillation loss.

- ViLD-text: the open-vocabulary predictor trained on base classes (``OVROIHeads``).
- ViLD-image: per image, up to ``MAX_PROPOSALS`` precomputed proposals with CLIP embeddings of
  their crops (``batched_inputs[i]["vild_proposals"]``, see ``data/vild_embeddings.py``) get only
  the L1 distillation loss: per RoI the sum over dimensions of |student - teacher| (both
  L2-normalised), averaged over RoIs, times ``DISTILL_WEIGHT`` (vild_model.py ``build_losses``).
  Vanilla ViLD passes them through the same head as the sampled RoIs (concatenated).
- ViLD-ensemble: the VLM scorer ``vild_image`` is the second branch (own box head and
  projection, the official ``distill-*`` layers); only it sees the distillation RoIs in training,
  and at test time the fusion rule ``vild_ensemble`` combines the two branches. So the ensemble
  is configuration (``VLM_SCORER.NAME "vild_image"``, ``FUSION.RULE "vild_ensemble"``), and these
  heads only add the distillation loss.
"""

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
from detectron2.structures import Boxes, Instances

from ..vlm_scorers import ViLDImageBranchScorer
from .ov_roi_heads import OVROIHeads

__all__ = ["ViLDROIHeads", "vild_distillation_loss"]


def vild_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """ViLD-image loss (methods §1.4; vild_model.py ``build_losses``): both sides L2-normalised,
    per-RoI sum over dimensions of |student - teacher|, averaged over RoIs.

    (R, D), (R, D) -> scalar; 0 (with a gradient path) when R = 0.
    """
    if student.shape[0] == 0:
        return student.sum() * 0.0
    diff = F.normalize(student, dim=1) - F.normalize(teacher.to(student.dtype), dim=1)
    return diff.abs().sum(dim=1).mean()


@ROI_HEADS_REGISTRY.register()
class ViLDROIHeads(OVROIHeads):
    """ViLD-text + ViLD-image (+ ViLD-ensemble). Needs the ``OVDetGeneralizedRCNN``
    meta-architecture, which
    hands ``distillation_targets`` (one ``Instances`` with ``proposal_boxes`` and
    ``clip_embeds`` per image, or None) to these heads during training."""

    @configurable
    def __init__(
        self,
        *,
        distill_weight: float,
        text_weight: float,
        max_distill_proposals: int,
        **kwargs,
    ):
        """
        Args:
            distill_weight: w of w * L_image (0.5 for R50; 1.0 and 2.0 for R152).
            text_weight: factor on the ViLD-text classification loss; 0 trains ViLD-image alone
                (the paper's ViLD-image row, Table 3: distillation loss only for the classifier).
            max_distill_proposals: distillation RoIs per image (``max_num_rois`` 300).
            kwargs: :class:`OVROIHeads` arguments; a ``vild_image`` scorer makes the ensemble.
        """
        super().__init__(**kwargs)
        self.distill_weight = distill_weight
        self.text_weight = float(text_weight)
        self.max_distill_proposals = max_distill_proposals
        self.distillation_targets: Optional[List[Optional[Instances]]] = None

    @property
    def image_branch(self) -> Optional[ViLDImageBranchScorer]:
        """ViLD-ensemble's second branch (the ``vild_image`` scorer), or None for vanilla ViLD."""
        scorer = self.vlm_scorer
        return scorer if isinstance(scorer, ViLDImageBranchScorer) else None

    @classmethod
    def from_config(cls, cfg, input_shape, backbone=None):
        ret = super().from_config(cfg, input_shape, backbone)
        v = cfg.MODEL.OVD.VILD
        ret.update(
            {
                "distill_weight": v.DISTILL_WEIGHT,
                "text_weight": v.TEXT_WEIGHT,
                "max_distill_proposals": v.MAX_PROPOSALS,
            }
        )
        return ret

    # ---- training ----------------------------------------------------------------------------
    def _distill_inputs(self, num_images: int):
        targets = self.distillation_targets
        if not targets or all(t is None for t in targets):
            return None
        if len(targets) != num_images:
            raise ValueError(f"{len(targets)} distillation targets for {num_images} images")
        out = []
        for t in targets:
            if t is None:
                t = Instances((1, 1), proposal_boxes=Boxes(torch.zeros(0, 4)))
                t.clip_embeds = torch.zeros(0, self.text_classifier.embed_dim)
            out.append(t[: self.max_distill_proposals])
        return out

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        distill = self._distill_inputs(len(proposals)) if self.training else None
        if distill is None:
            return super()._forward_box(features, proposals)
        feats = [features[f] for f in self.box_in_features]
        sampled = [p.proposal_boxes for p in proposals]
        extra = [d.proposal_boxes.to(feats[0].device) for d in distill]
        teacher = torch.cat([d.clip_embeds for d in distill]).to(feats[0].device)
        if self.image_branch is not None:
            # Text branch on the sampled RoIs; image branch only on the distillation RoIs.
            predictions = self.box_predictor(self.box_head(self.box_pooler(feats, sampled)))
            student = self.image_branch.embed(self.box_pooler(feats, extra))
        else:
            # One pass through the shared head: per image [sampled RoIs, distillation RoIs].
            joint = [Boxes.cat([a, b]) for a, b in zip(sampled, extra)]
            head = self.box_head(self.box_pooler(feats, joint)).flatten(start_dim=1)
            is_sampled = torch.cat(
                [
                    torch.cat(
                        [
                            torch.ones(len(a), dtype=torch.bool),
                            torch.zeros(len(b), dtype=torch.bool),
                        ]
                    )
                    for a, b in zip(sampled, extra)
                ]
            ).to(head.device)
            predictions = self.box_predictor(head[is_sampled])
            student = self.box_predictor.embed(head[~is_sampled])
        losses = self.box_predictor.losses(predictions, proposals)
        losses["loss_cls"] = self.text_weight * losses["loss_cls"]
        losses["loss_vild_image"] = self.distill_weight * vild_distillation_loss(student, teacher)
        return losses
