"""Open-vocabulary ROI heads with optional frozen-VLM score fusion (F-VLM, F-ViT, RO-ViT, ViLD).

Training is Detectron2's ``StandardROIHeads`` with the open-vocabulary predictor. At test time
the detector's class probabilities can be fused with a VLM's region scores:

    det_log_probs = log_softmax(detector logits)                               (N, K+1)
    vlm_logits    = cos(VLM region embedding, [text; background]) * T_vlm      (N, K+1)
    scores        = fusion rule (fusion.py)  [* objectness^w]

The VLM scorer comes from ``MODEL.OVD.VLM_SCORER`` (vlm_scorers.py); given the detector's backbone
(``OVDetGeneralizedRCNN`` passes it) it shares the backbone's frozen CLIP tower. Its boxes are
the proposals the detector classifies. The rule comes from ``MODEL.OVD.FUSION.RULE``
(``FUSION_RULE_REGISTRY``).
"""

import logging
from typing import Dict, List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads, build_roi_heads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import ImageList, Instances

from ..vlm_scorers import VLMRegionScorer, build_vlm_scorer
from .fusion import get_fusion_rule, objectness_weighting
from .ov_predictor import OVFastRCNNOutputLayers, resolve_vocabularies

__all__ = ["OVROIHeads", "build_roi_heads_with_backbone", "config_with_vocabulary_classes"]

logger = logging.getLogger(__name__)


def config_with_vocabulary_classes(cfg, train_vocab=None):
    """A copy of ``cfg`` whose ``MODEL.ROI_HEADS.NUM_CLASSES`` is the training vocabulary's size:
    NUM_CLASSES follows the vocabulary, so users never meet a shape mismatch.

    Args:
        train_vocab: the resolved training :class:`Vocabulary`; None resolves
            ``MODEL.OVD.TRAIN_VOCABULARY``.
    """
    if train_vocab is None:
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
            "class-agnostic, methods §1.1): set MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK True."
        )
    return cfg


def resolve_vlm_temperature(value: float, scorer: Optional[VLMRegionScorer]) -> float:
    """``MODEL.OVD.FUSION.VLM_TEMPERATURE``: the value itself, or for 0 the CLIP's own learned
    logit scale, read from the scorer's tower (recorded when the tower was built)."""
    if value != 0:
        return float(value)
    scale = getattr(getattr(scorer, "visual", None), "ovdet_logit_scale", None)
    if scale is None:
        raise ValueError(
            "MODEL.OVD.FUSION.VLM_TEMPERATURE 0 means the CLIP's own logit scale, but the VLM "
            f"scorer ({type(scorer).__name__ if scorer is not None else 'none'}) has no CLIP "
            "tower to read it from. Set a value > 0 (100 for F-VLM, 50 for F-ViT on LVIS)."
        )
    return float(scale)


def build_roi_heads_with_backbone(cfg, backbone):
    """Detectron2's ``build_roi_heads``, except that ovdet's heads also get the backbone (their
    VLM scorer shares its frozen CLIP tower). Used by ``OVDetGeneralizedRCNN``."""
    cls = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
    if isinstance(cls, type) and issubclass(cls, OVROIHeads):
        return cls(cfg, backbone.output_shape(), backbone=backbone)
    return build_roi_heads(cfg, backbone.output_shape())


@ROI_HEADS_REGISTRY.register()
class OVROIHeads(StandardROIHeads):
    """``StandardROIHeads`` + :class:`OVFastRCNNOutputLayers` + optional VLM score fusion."""

    @configurable
    def __init__(
        self,
        *,
        vlm_scorer: Optional[VLMRegionScorer],
        fusion_rule: str,
        fusion_alpha: float,
        fusion_beta: float,
        vlm_temperature: float,
        objectness_weight: float,
        **kwargs,
    ):
        """
        The papers' values are in config.py (``MODEL.OVD.FUSION``) and the paper configs.

        Args:
            vlm_scorer: a VLM region scorer (``vlm_scorers.VLMRegionScorer``) or None.
            fusion_rule: a name in ``FUSION_RULE_REGISTRY`` ("fvlm", "fvit", "vild_ensemble",
                or one of your own); "" means no fusion.
            fusion_alpha, fusion_beta: VLM weights in [0, 1] for base / novel classes (F-VLM
                0.35 / 0.65; F-ViT 0.1 / 0.6; ViLD-ensemble 1/3 / 2/3).
            vlm_temperature: T_vlm > 0 multiplying the VLM cosines (F-VLM 1/0.01 = 100; F-ViT 50
                on LVIS, 75 on COCO; ViLD-ensemble: the classifier's 100).
            objectness_weight: w >= 0 in scores * sigmoid(objectness)^w (0 = off; DITO/RO-ViT 3).
            kwargs: :class:`StandardROIHeads` arguments.
        """
        super().__init__(**kwargs)
        if not isinstance(self.box_predictor, OVFastRCNNOutputLayers):
            raise TypeError("OVROIHeads needs an OVFastRCNNOutputLayers box predictor")
        self.fusion_rule = fusion_rule  # checked here: a typo fails at build, not at evaluation
        if fusion_rule and vlm_scorer is None:
            raise ValueError(
                f"MODEL.OVD.FUSION.RULE={fusion_rule!r} needs a VLM scorer: set "
                "MODEL.OVD.VLM_SCORER.NAME ('attnpool', 'dense', 'avgpool' or 'vild_image')."
            )
        for key, value in (("ALPHA", fusion_alpha), ("BETA", fusion_beta)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"MODEL.OVD.FUSION.{key}={value} is a VLM weight in a geometric mean "
                    "p_det^(1-w) p_vlm^w and must lie in [0, 1]."
                )
        if not vlm_temperature > 0:
            raise ValueError(
                f"MODEL.OVD.FUSION.VLM_TEMPERATURE={vlm_temperature} must be > 0 (it multiplies "
                "the VLM cosines: 100 for F-VLM, 50 for F-ViT on LVIS)."
            )
        if objectness_weight < 0:
            raise ValueError(
                f"MODEL.OVD.FUSION.OBJECTNESS_WEIGHT={objectness_weight} must be >= 0 (0 = off)."
            )
        if vlm_scorer is not None and vlm_scorer.embed_dim != self.text_classifier.embed_dim:
            raise ValueError(
                f"The VLM scorer gives {vlm_scorer.embed_dim}-d region embeddings but the text "
                f"classifier is {self.text_classifier.embed_dim}-d: the VLM and the text encoder "
                "(MODEL.OVD.CLIP) must be the same CLIP model."
            )
        self.vlm_scorer = vlm_scorer
        self.fusion_alpha = fusion_alpha
        self.fusion_beta = fusion_beta
        self.vlm_temperature = vlm_temperature
        self.objectness_weight = objectness_weight

    @property
    def fusion_rule(self) -> str:
        """Name of the fusion rule ("" = detector scores only); settable at any time."""
        return self._fusion_rule

    @fusion_rule.setter
    def fusion_rule(self, name: str) -> None:
        self.fusion = get_fusion_rule(name) if name else None
        self._fusion_rule = name

    @classmethod
    def from_config(cls, cfg, input_shape, backbone=None):
        """``backbone``: the detector's backbone, whose frozen CLIP tower the scorer shares."""
        vocabularies = resolve_vocabularies(cfg)  # once; the box predictor gets the same pair
        cfg = config_with_vocabulary_classes(cfg, vocabularies[0])
        # StandardROIHeads.from_config, with the vocabularies handed to the box head's builder
        ret = super(StandardROIHeads, cls).from_config(cfg)
        ret["train_on_pred_boxes"] = cfg.MODEL.ROI_BOX_HEAD.TRAIN_ON_PRED_BOXES
        ret.update(cls._init_box_head(cfg, input_shape, vocabularies))
        ret.update(cls._init_mask_head(cfg, input_shape))
        ret.update(cls._init_keypoint_head(cfg, input_shape))
        f = cfg.MODEL.OVD.FUSION
        scorer = build_vlm_scorer(
            cfg,
            backbone=backbone,
            box_head=ret["box_head"],
            box_predictor=ret["box_predictor"],
        )
        ret.update(
            {
                "vlm_scorer": scorer,
                "fusion_rule": f.RULE,
                "fusion_alpha": f.ALPHA,
                "fusion_beta": f.BETA,
                "vlm_temperature": resolve_vlm_temperature(f.VLM_TEMPERATURE, scorer),
                "objectness_weight": f.OBJECTNESS_WEIGHT,
            }
        )
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape, vocabularies=None):
        """Detectron2's box head, with :class:`OVFastRCNNOutputLayers` as the predictor.
        ``vocabularies``: the resolved (train, test) pair (None: resolved from ``cfg``)."""
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = OVFastRCNNOutputLayers(
            cfg, ret["box_head"].output_shape, vocabularies=vocabularies
        )
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
        scores = self.class_scores(predictions, images, features, box_features, proposals)
        if self.objectness_weight and len(proposals) and proposals[0].has("objectness_logits"):
            objectness = torch.cat([p.objectness_logits for p in proposals])
            scores = objectness_weighting(scores, objectness, self.objectness_weight)
        boxes = self.box_predictor.predict_boxes(predictions, proposals)
        instances, _ = fast_rcnn_inference(
            boxes,
            scores.split([len(p) for p in proposals]),
            [p.image_size for p in proposals],
            self.box_predictor.test_score_thresh,
            self.box_predictor.test_nms_thresh,
            self.box_predictor.test_topk_per_image,
        )
        return instances

    def class_scores(self, predictions, images, features, box_features, proposals):
        """(N, K+1) final class scores: the detector's probabilities, or their fusion with the
        VLM's region scores (``fusion_rule``)."""
        if self.fusion is None:
            return torch.cat(self.box_predictor.predict_probs(predictions, proposals), dim=0)
        det_log_probs = self.box_predictor.predict_log_probs(predictions)
        embeddings = self.vlm_scorer(
            images.tensor, features, [p.proposal_boxes for p in proposals], box_features
        )
        rows = self.text_classifier.rows()
        vlm_logits = embeddings.to(rows.dtype) @ rows.t() * self.vlm_temperature
        return self.fusion(
            det_log_probs,
            vlm_logits,
            self.text_classifier.base_mask,
            self.fusion_alpha,
            self.fusion_beta,
        )
