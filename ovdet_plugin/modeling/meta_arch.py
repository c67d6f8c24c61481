"""``OVRCNN``: Detectron2's ``GeneralizedRCNN`` that (1) hands the backbone to ovdet's ROI heads,
so their VLM scorer shares the frozen CLIP tower (F-VLM: one backbone), and (2) hands per-image
distillation targets (ViLD-image: precomputed proposals with CLIP crop embeddings) to ROI heads
that use them."""

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator

from .roi_heads.ov_roi_heads import build_roi_heads_with_backbone

__all__ = ["OVRCNN"]


@META_ARCH_REGISTRY.register()
class OVRCNN(GeneralizedRCNN):
    """Same as ``GeneralizedRCNN``, except:

    - ovdet ROI heads are built with the backbone (:func:`build_roi_heads_with_backbone`);
    - in training, ``batched_inputs[i]["vild_proposals"]`` (an ``Instances`` with
      ``proposal_boxes`` and ``clip_embeds``, written by the ViLD dataset mapper) is set as
      ``roi_heads.distillation_targets`` for the duration of the forward pass.
    """

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        return {
            "backbone": backbone,
            "proposal_generator": build_proposal_generator(cfg, backbone.output_shape()),
            "roi_heads": build_roi_heads_with_backbone(cfg, backbone),
            "input_format": cfg.INPUT.FORMAT,
            "vis_period": cfg.VIS_PERIOD,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    def forward(self, batched_inputs):
        uses_targets = hasattr(self.roi_heads, "distillation_targets")
        if not (self.training and uses_targets):
            return super().forward(batched_inputs)
        self.roi_heads.distillation_targets = [
            x["vild_proposals"].to(self.device) if "vild_proposals" in x else None
            for x in batched_inputs
        ]
        try:
            return super().forward(batched_inputs)
        finally:
            self.roi_heads.distillation_targets = None
