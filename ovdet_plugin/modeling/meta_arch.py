"""``OVDetGeneralizedRCNN``: Detectron2's ``GeneralizedRCNN`` that (1) hands the backbone to
ovdet's ROI heads, so their VLM scorer shares the frozen CLIP tower (F-VLM: one backbone), and
(2) hands per-image distillation targets (ViLD-image: precomputed proposals with CLIP crop
embeddings) to ROI heads that use them. ``OVRCNN`` is its deprecated former name."""

import logging
from typing import Callable

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN, build_backbone
from detectron2.modeling.proposal_generator import build_proposal_generator
from torch import nn

from ..config import require_ovdet_config
from .roi_heads.ov_roi_heads import build_roi_heads_with_backbone

__all__ = ["BackbonePart", "OVDetGeneralizedRCNN", "OVRCNN"]

logger = logging.getLogger(__name__)


class BackbonePart:
    """A model part that can only be built once the backbone exists: ``build(backbone=...,
    **kwargs)``. :class:`OVDetGeneralizedRCNN` builds it with its backbone.

    The LazyConfig path needs it: ``instantiate`` builds every node on its own, so a node cannot
    receive the object another node becomes. ``L(BackbonePart)(build=build_roi_heads_with_backbone,
    cfg=...)`` hands the detector's backbone (the very object, not a second one) to the ROI heads,
    whose VLM scorer then shares the frozen CLIP tower, as in the YAML path.
    """

    def __init__(self, build: Callable[..., nn.Module], **kwargs):
        """
        Args:
            build: a builder taking ``backbone=`` and ``kwargs``, returning the part.
            kwargs: its other arguments.
        """
        if not callable(build):
            raise TypeError(
                f"BackbonePart(build={build!r}) needs a callable builder taking backbone=...; "
                "pass the function itself (e.g. build_roi_heads_with_backbone)."
            )
        self.build = build
        self.kwargs = kwargs

    def __call__(self, backbone: nn.Module) -> nn.Module:
        return self.build(backbone=backbone, **self.kwargs)

    def __repr__(self) -> str:
        return f"BackbonePart({getattr(self.build, '__qualname__', self.build)})"


@META_ARCH_REGISTRY.register()
class OVDetGeneralizedRCNN(GeneralizedRCNN):
    """Same as ``GeneralizedRCNN``, except:

    - ovdet ROI heads are built with the backbone (:func:`build_roi_heads_with_backbone`);
    - in training, ``batched_inputs[i]["vild_proposals"]`` (an ``Instances`` with
      ``proposal_boxes`` and ``clip_embeds``, written by the ViLD dataset mapper) is set as
      ``roi_heads.distillation_targets`` for the duration of the forward pass.
    - ``proposal_generator`` and ``roi_heads`` may be :class:`BackbonePart` s (LazyConfig), built
      here with the backbone.
    """

    @configurable
    def __init__(self, *, backbone, proposal_generator, roi_heads, **kwargs):
        """
        Args:
            backbone, proposal_generator, roi_heads: as ``GeneralizedRCNN``; the last two may be
                :class:`BackbonePart` s, built with ``backbone``.
            kwargs: the other ``GeneralizedRCNN`` arguments.
        """
        if isinstance(proposal_generator, BackbonePart):
            proposal_generator = proposal_generator(backbone)
        if isinstance(roi_heads, BackbonePart):
            roi_heads = roi_heads(backbone)
        super().__init__(
            backbone=backbone,
            proposal_generator=proposal_generator,
            roi_heads=roi_heads,
            **kwargs,
        )

    @classmethod
    def from_config(cls, cfg):
        require_ovdet_config(cfg, "MODEL.META_ARCHITECTURE " + cfg.MODEL.META_ARCHITECTURE)
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


@META_ARCH_REGISTRY.register()
class OVRCNN(OVDetGeneralizedRCNN):
    """Deprecated name of :class:`OVDetGeneralizedRCNN` (it read as the unrelated OVR-CNN paper,
    Zareian et al. 2021); kept so that existing configs load. Use
    ``META_ARCHITECTURE: "OVDetGeneralizedRCNN"``."""

    def __init__(self, *args, **kwargs):
        logger.warning(
            'MODEL.META_ARCHITECTURE "OVRCNN" is deprecated: it is "OVDetGeneralizedRCNN" now '
            "(same model); update your config."
        )
        super().__init__(*args, **kwargs)
