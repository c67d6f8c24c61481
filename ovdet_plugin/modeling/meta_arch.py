"""``OVRCNN``: Detectron2's ``GeneralizedRCNN`` that also hands per-image distillation targets
(ViLD-image: precomputed proposals with CLIP crop embeddings) to ROI heads that use them."""

from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN

__all__ = ["OVRCNN"]


@META_ARCH_REGISTRY.register()
class OVRCNN(GeneralizedRCNN):
    """Same as ``GeneralizedRCNN``; in training, ``batched_inputs[i]["vild_proposals"]`` (an
    ``Instances`` with ``proposal_boxes`` and ``clip_embeds``, written by the ViLD dataset mapper)
    is set as ``roi_heads.distillation_targets`` for the duration of the forward pass."""

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
