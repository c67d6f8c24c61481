"""Novel-object proposals of RO-ViT / DITO (methods §4.3): an OLN-style RPN whose objectness is
a localisation-quality (centerness) score.

Differences from Detectron2's ``RPN`` (whose anchor matching, sampling, head and top-k/NMS
selection are reused unchanged):

- one anchor per location (aspect ratio 1.0);
- the objectness target of a positive anchor is the centerness of its centre inside the matched
  ground-truth box, ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` (FCOS / OLN),
  trained with an L1 loss on the sigmoid (``RpnCenterLoss``); sampled negatives get target 0;
- the box branch regresses left/right/top/bottom distances from the anchor centre
  (log-space, in units of the anchor size) with an IoU loss (``RpnBoxIoULoss``, weight 8.0).

Proposals carry ``objectness_logits`` like Detectron2's RPN, so stock ROI heads consume them;
:func:`ovdet_plugin.modeling.roi_heads.fusion.objectness_weighting` is the ROI-head side
(final score x objectness^w, ``MODEL.OVD.FUSION.OBJECTNESS_WEIGHT``).
"""

import math
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.proposal_generator.build import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator.rpn import RPN
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage
from torchvision.ops import generalized_box_iou_loss

__all__ = [
    "CenternessRPN",
    "LRTBTransform",
    "centerness_targets",
    "iou_loss",
]

# exp() clamp of the log-distance, as Detectron2's Box2BoxTransform (log(1000 / 16))
_SCALE_CLAMP = math.log(1000.0 / 16)


def centerness_targets(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Centerness of each point inside its box (FCOS / OLN, methods §4.3).

    Args:
        points: (..., 2) ``(x, y)``; boxes: (..., 4) ``(x0, y0, x1, y1)``, broadcastable.
    Returns:
        (...) ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))``, 0 where the point is outside the
        box (or on its border).
    """
    left = points[..., 0] - boxes[..., 0]
    right = boxes[..., 2] - points[..., 0]
    top = points[..., 1] - boxes[..., 1]
    bottom = boxes[..., 3] - points[..., 1]
    lr = torch.stack([left, right], -1)
    tb = torch.stack([top, bottom], -1)
    inside = (lr.min(-1).values > 0) & (tb.min(-1).values > 0)
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (
        tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6)
    )
    return torch.where(inside, ratio.clamp(min=0).sqrt(), torch.zeros_like(ratio))


class LRTBTransform:
    """Box coding by distances from the anchor centre to the four sides (methods §4.3).

    ``deltas = log(d / s)`` for ``d`` in (left, top, right, bottom) and ``s`` the anchor size
    (its width), so a zero prediction is the anchor itself.
    """

    def get_deltas(self, anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(R, 4) anchors, (R, 4) target boxes containing the anchor centres -> (R, 4) deltas."""
        cx, cy, size = self._centre_size(anchors)
        d = torch.stack([cx - boxes[:, 0], cy - boxes[:, 1], boxes[:, 2] - cx, boxes[:, 3] - cy], 1)
        return torch.log(d.clamp(min=1e-3) / size[:, None])

    def apply_deltas(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(R, 4) deltas on (R, 4) anchors -> (R, 4) XYXY boxes."""
        cx, cy, size = self._centre_size(anchors)
        d = torch.exp(deltas.float().clamp(max=_SCALE_CLAMP)) * size[:, None]
        return torch.stack([cx - d[:, 0], cy - d[:, 1], cx + d[:, 2], cy + d[:, 3]], 1)

    @staticmethod
    def _centre_size(anchors: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cx = 0.5 * (anchors[:, 0] + anchors[:, 2])
        cy = 0.5 * (anchors[:, 1] + anchors[:, 3])
        return cx, cy, (anchors[:, 2] - anchors[:, 0]).clamp(min=1e-3)


def iou_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "iou") -> torch.Tensor:
    """Summed box IoU loss of (R, 4) XYXY pairs: ``1 - IoU`` ("iou") or ``1 - GIoU`` ("giou")."""
    if pred.numel() == 0:
        return pred.sum() * 0
    if loss_type == "giou":
        return generalized_box_iou_loss(pred, target, reduction="sum")
    if loss_type != "iou":
        raise ValueError(
            f"Unknown IoU loss {loss_type!r} (MODEL.OVD.CENTERNESS_RPN.IOU_LOSS_TYPE)."
        )
    ious = _paired_iou(pred, target)
    return (1 - ious).sum()


def _paired_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of (R, 4) box pairs (row i of a with row i of b)."""
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(1)
    return inter / (area_a + area_b - inter).clamp(min=1e-6)


@PROPOSAL_GENERATOR_REGISTRY.register()
class CenternessRPN(RPN):
    """OLN-style RPN of RO-ViT / DITO (methods §4.3); see the module docstring.

    Select it with ``MODEL.PROPOSAL_GENERATOR.NAME: "CenternessRPN"`` and
    ``MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS: [[1.0]]``.
    """

    @configurable
    def __init__(
        self,
        *,
        iou_loss_weight: float = 8.0,
        iou_loss_type: str = "iou",
        centerness_loss_weight: float = 1.0,
        negatives_in_objectness: bool = True,
        **kwargs,
    ):
        """
        Args:
            iou_loss_weight: weight of the lrtb IoU loss (8.0, methods §4.3).
            iou_loss_type: "iou" or "giou".
            centerness_loss_weight: weight of the L1 centerness loss.
            negatives_in_objectness: also train sampled negative anchors towards 0.
            kwargs: Detectron2 ``RPN`` arguments (in_features, head, anchor_generator, ...).
        """
        kwargs["box2box_transform"] = LRTBTransform()
        super().__init__(**kwargs)
        num_anchors = self.anchor_generator.num_cell_anchors
        if any(n != 1 for n in num_anchors):
            raise ValueError(
                f"CenternessRPN uses one anchor per location, but the anchor generator has "
                f"{list(num_anchors)} per level. Set MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS: [[1.0]] "
                "and one size per level in MODEL.ANCHOR_GENERATOR.SIZES (e.g. [[32], [64], ...])."
            )
        self.iou_loss_weight = float(iou_loss_weight)
        self.iou_loss_type = iou_loss_type
        self.centerness_loss_weight = float(centerness_loss_weight)
        self.negatives_in_objectness = bool(negatives_in_objectness)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        c = cfg.MODEL.OVD.CENTERNESS_RPN
        ret.pop("box2box_transform")
        ret.update(
            {
                "iou_loss_weight": c.IOU_LOSS_WEIGHT,
                "iou_loss_type": c.IOU_LOSS_TYPE,
                "centerness_loss_weight": c.CENTERNESS_LOSS_WEIGHT,
                "negatives_in_objectness": c.NEGATIVES_IN_OBJECTNESS,
            }
        )
        return ret

    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[torch.Tensor],
        gt_labels: List[torch.Tensor],
        pred_anchor_deltas: List[torch.Tensor],
        gt_boxes: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Centerness L1 and lrtb IoU losses (same arguments as ``RPN.losses``).

        Returns:
            {"loss_rpn_centerness", "loss_rpn_iou"}, each divided by the number of sampled
            anchors (``BATCH_SIZE_PER_IMAGE`` x images, as Detectron2's RPN) and scaled by
            ``MODEL.RPN.LOSS_WEIGHT`` and its own weight.
        """
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R)
        anchors_t = Boxes.cat(anchors).tensor  # (R, 4)
        gt_boxes_t = torch.stack(gt_boxes)  # (N, R, 4)
        centres = 0.5 * (anchors_t[:, :2] + anchors_t[:, 2:])  # (R, 2)
        ctr = centerness_targets(centres[None], gt_boxes_t)  # (N, R)

        pos = gt_labels == 1
        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", pos.sum().item() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", (gt_labels == 0).sum().item() / num_images)

        # objectness: L1 on the sigmoid against the centerness target (RpnCenterLoss, methods §4.3)
        target = torch.where(pos, ctr, torch.zeros_like(ctr))
        valid = gt_labels >= 0 if self.negatives_in_objectness else pos
        logits = cat(pred_objectness_logits, dim=1)
        centerness_loss = F.l1_loss(
            torch.sigmoid(logits[valid].float()), target[valid], reduction="sum"
        )

        # box: IoU loss of the decoded lrtb boxes (RpnBoxIoULoss, methods §4.3), positives whose
        # centre lies inside their box (lrtb targets exist only there)
        box_pos = pos & (ctr > 0)
        deltas = cat(pred_anchor_deltas, dim=1)  # (N, R, 4)
        idx_img, idx_anchor = box_pos.nonzero(as_tuple=True)
        pred_boxes = self.box2box_transform.apply_deltas(
            deltas[idx_img, idx_anchor], anchors_t[idx_anchor]
        )
        box_loss = iou_loss(pred_boxes, gt_boxes_t[idx_img, idx_anchor], self.iou_loss_type)

        normalizer = self.batch_size_per_image * num_images
        weight = self.loss_weight.get("loss_rpn_cls", 1.0)
        return {
            "loss_rpn_centerness": centerness_loss
            / normalizer
            * self.centerness_loss_weight
            * weight,
            "loss_rpn_iou": box_loss / normalizer * self.iou_loss_weight * weight,
        }
