"""Open-vocabulary ROI heads with optional frozen-VLM score fusion (F-VLM, F-ViT, RO-ViT).

Training is Detectron2's ``StandardROIHeads`` with the open-vocabulary predictor. At test time
the detector's class probabilities can be fused with a frozen VLM's region scores:

    p_det = softmax(detector logits)                                  (N, K+1)
    p_vlm = softmax(cos(VLM region embedding, [text; background]) * T_vlm)   (N, K+1)
    scores = fusion rule (F-VLM or F-ViT, see fusion.py) [* objectness^w]

The VLM scorer (ResNet attention pool, ViT dense 1x1, ViT average pool) comes from
``MODEL.OVD.VLM_SCORER``; its region boxes are the proposals the detector classifies.
"""

import logging
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import ImageList, Instances

from ..vlm_scorers import build_vlm_scorer
from .fusion import fuse_scores, objectness_weighting
from .ov_predictor import OVFastRCNNOutputLayers, resolve_vocabularies

__all__ = ["OVROIHeads", "config_with_vocabulary_classes"]

logger = logging.getLogger(__name__)


def config_with_vocabulary_classes(cfg):
    """A copy of ``cfg`` whose ``MODEL.ROI_HEADS.NUM_CLASSES`` is the training vocabulary's size:
    NUM_CLASSES follows the vocabulary, so users never meet a shape mismatch."""
    train_vocab, _ = resolve_vocabularies(cfg)
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(train_vocab):
        logger.info(
            "MODEL.ROI_HEADS.NUM_CLASSES=%d follows the training vocabulary: %d classes (%s).",
            cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            len(train_vocab),
            train_vocab.source,
        )
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(train_vocab)
    if cfg.MODEL.MASK_ON and not cfg.MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK:
        raise ValueError(
            "Open-vocabulary heads predict class-agnostic masks (ViLD's mask head is "
            "class-agnostic, METHODS 1.1): set MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK True."
        )
    return cfg


@ROI_HEADS_REGISTRY.register()
class OVROIHeads(StandardROIHeads):
    """``StandardROIHeads`` + :class:`OVFastRCNNOutputLayers` + optional VLM score fusion."""

    @configurable
    def __init__(
        self,
        *,
        vlm_scorer: Optional[torch.nn.Module] = None,
        fusion_rule: str = "",
        fusion_alpha: float = 0.35,
        fusion_beta: float = 0.65,
        vlm_temperature: float = 100.0,
        objectness_weight: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            vlm_scorer: a VLM region scorer (``vlm_scorers.VLMRegionScorer``) or None.
            fusion_rule: "fvlm" or "fvit" (see fusion.py); "" means no fusion.
            fusion_alpha, fusion_beta: VLM weights for base / novel classes (METHODS 2.4, 3.8).
            vlm_temperature: T_vlm multiplying the VLM cosines (F-VLM 1/0.01 = 100, METHODS 2.3;
                F-ViT 50 on LVIS, 75 on COCO, METHODS 3.8).
            objectness_weight: w in scores * sigmoid(objectness)^w (0 = off; METHODS 2.4, 4.3).
            kwargs: :class:`StandardROIHeads` arguments.
        """
        super().__init__(**kwargs)
        if not isinstance(self.box_predictor, OVFastRCNNOutputLayers):
            raise TypeError("OVROIHeads needs an OVFastRCNNOutputLayers box predictor")
        if fusion_rule and vlm_scorer is None:
            raise ValueError(
                f"MODEL.OVD.FUSION.RULE={fusion_rule!r} needs a VLM scorer: set "
                "MODEL.OVD.VLM_SCORER.NAME ('attnpool', 'dense' or 'avgpool')."
            )
        if vlm_scorer is not None and vlm_scorer.embed_dim != self.text_classifier.embed_dim:
            raise ValueError(
                f"The VLM scorer gives {vlm_scorer.embed_dim}-d region embeddings but the text "
                f"classifier is {self.text_classifier.embed_dim}-d: the VLM and the text encoder "
                "(MODEL.OVD.CLIP) must be the same CLIP model."
            )
        self.vlm_scorer = vlm_scorer
        self.fusion_rule = fusion_rule
        self.fusion_alpha = fusion_alpha
        self.fusion_beta = fusion_beta
        self.vlm_temperature = vlm_temperature
        self.objectness_weight = objectness_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        cfg = config_with_vocabulary_classes(cfg)
        ret = super().from_config(cfg, input_shape)
        f = cfg.MODEL.OVD.FUSION
        scorer = build_vlm_scorer(cfg) if cfg.MODEL.OVD.VLM_SCORER.NAME else None
        ret.update(
            {
                "vlm_scorer": scorer,
                "fusion_rule": f.RULE,
                "fusion_alpha": f.ALPHA,
                "fusion_beta": f.BETA,
                "vlm_temperature": f.VLM_TEMPERATURE,
                "objectness_weight": f.OBJECTNESS_WEIGHT,
            }
        )
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = OVFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    @property
    def text_classifier(self):
        return self.box_predictor.text_classifier

    # ---- inference ---------------------------------------------------------------------------
    def forward(self, images: ImageList, features, proposals, targets=None):
        if self.training:
            return super().forward(images, features, proposals, targets)
        pred_instances = self._predict(images, features, proposals)
        return self.forward_with_given_boxes(features, pred_instances), {}

    def _predict(
        self, images: ImageList, features: Dict[str, torch.Tensor], proposals: List[Instances]
    ) -> List[Instances]:
        """Score, fuse, regress and run per-class NMS (Detectron2's ``fast_rcnn_inference``)."""
        box_features = self.box_pooler(
            [features[f] for f in self.box_in_features], [p.proposal_boxes for p in proposals]
        )
        predictions = self.box_predictor(self.box_head(box_features))
        probs = torch.cat(self.box_predictor.predict_probs(predictions, proposals), dim=0)
        probs = self.fuse_probabilities(probs, images, box_features, proposals)
        if self.objectness_weight and len(proposals) and proposals[0].has("objectness_logits"):
            objectness = torch.cat([p.objectness_logits for p in proposals])
            probs = objectness_weighting(probs, objectness, self.objectness_weight)
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        instances, _ = fast_rcnn_inference(
            boxes,
            probs.split([len(p) for p in proposals]),
            [p.image_size for p in proposals],
            self.box_predictor.test_score_thresh,
            self.box_predictor.test_nms_thresh,
            self.box_predictor.test_topk_per_image,
        )
        return instances

    def fuse_probabilities(self, probs, images, box_features, proposals) -> torch.Tensor:
        """(N, K+1) detector probabilities -> (N, K+1) fused scores (identity without fusion)."""
        if not self.fusion_rule:
            return probs
        embeddings = self.vlm_scorer(images.tensor, [p.proposal_boxes for p in proposals])
        vlm_logits = embeddings @ self.text_classifier.rows().t() * self.vlm_temperature
        p_vlm = vlm_logits.softmax(dim=1)
        return fuse_scores(
            self.fusion_rule,
            probs,
            p_vlm,
            self.text_classifier.base_mask,
            self.fusion_alpha,
            self.fusion_beta,
        )
