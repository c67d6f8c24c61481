"""VLM region scorers: L2-normalised CLIP-space embeddings of boxes, from a frozen CLIP tower.

One interface, three methods (DESIGN.md; METHODS.md 2.3, 3.2, 4.3):

- ``"attnpool"`` (:class:`AttnPoolRegionScorer`, F-VLM): RoIAlign on the frozen C5 map (stride
  32) at the attention-pool grid size (7 for RN50 at 224, 9 / 12 / 14 for RN50x4 / x16 / x64),
  then CLIP's own attention pool.
- ``"dense"`` (:class:`DenseRegionScorer`, F-ViT): 1x1 RoIAlign on the CLIPSelf dense map
  (value-only last block, :class:`ovdet_plugin.clip.dense.DenseCLIPViT`), re-normalised.
- ``"avgpool"`` (:class:`AvgPoolRegionScorer`, RO-ViT): RoIAlign (14x14) on the last ViT map
  projected to CLIP space, then the mean.

Every scorer owns its tower frozen (no gradient, eval mode, ``no_grad``), so it can run on a
frozen copy of the CLIP tower while the detector's backbone is fine-tuned
(``MODEL.OVD.VLM_SCORER.FROZEN_COPY``). Boxes are in input-image pixels (x0, y0, x1, y1) of the
tensor given to :meth:`VLMRegionScorer.forward` (Detectron2's padded ``images.tensor``).
"""

import copy
import logging
from typing import Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes
from torch import nn
from torchvision.ops import roi_align

from ..clip.dense import DenseCLIPViT, is_open_clip_vit
from .backbone.clip_resnet import is_open_clip_resnet
from .backbone.utils import build_clip_visual, clip_backbone_source, freeze_module

__all__ = [
    "VLM_SCORERS",
    "AttnPoolRegionScorer",
    "AvgPoolRegionScorer",
    "DenseRegionScorer",
    "VLMRegionScorer",
    "build_vlm_scorer",
    "find_clip_tower",
    "register_vlm_scorer",
]

logger = logging.getLogger(__name__)

BoxesLike = Union[torch.Tensor, Boxes, Sequence[Union[torch.Tensor, Boxes]]]

#: name -> scorer class; extend with :func:`register_vlm_scorer`.
VLM_SCORERS: Dict[str, type] = {}


def register_vlm_scorer(name: str) -> Callable[[type], type]:
    """Class decorator adding a :class:`VLMRegionScorer` subclass under ``name``."""

    def deco(cls: type) -> type:
        if name in VLM_SCORERS:
            raise KeyError(f"VLM scorer {name!r} is already registered ({VLM_SCORERS[name]}).")
        VLM_SCORERS[name] = cls
        cls.name = name
        return cls

    return deco


def _boxes_to_rois(boxes: BoxesLike, device: torch.device) -> torch.Tensor:
    """Boxes per image -> (R, 5) RoIs (batch index, x0, y0, x1, y1) for torchvision's roi_align."""
    if isinstance(boxes, (torch.Tensor, Boxes)):
        boxes = [boxes]
    rois = []
    for i, b in enumerate(boxes):
        t = b.tensor if isinstance(b, Boxes) else torch.as_tensor(b)
        t = t.to(device=device, dtype=torch.float32).reshape(-1, 4)
        rois.append(torch.cat([t.new_full((t.shape[0], 1), float(i)), t], dim=1))
    if not rois:
        return torch.zeros((0, 5), device=device)
    return torch.cat(rois, dim=0)


class VLMRegionScorer(nn.Module):
    """Interface: ``forward(images, boxes) -> (R, D)`` L2-normalised CLIP-space region embeddings.

    Subclasses define :meth:`extract` (images -> the map regions are pooled from) and
    :meth:`pool` (map + boxes -> embeddings). A caller that already has the map (e.g. the C5 of
    a frozen backbone sharing the tower) can call :meth:`pool` directly. The tower is frozen.
    """

    name: str = ""
    #: which tower kinds the scorer accepts: "resnet" or "vit"
    tower_kind: str = ""

    def __init__(self, *, pooler_resolution: int, sampling_ratio: int = -1):
        """Subclasses register their tower module, then call :meth:`_freeze`."""
        super().__init__()
        self.pooler_resolution = int(pooler_resolution)
        self.sampling_ratio = int(sampling_ratio)

    def _freeze(self) -> None:
        freeze_module(self)

    def train(self, mode: bool = True):
        """The scorer's tower is always frozen: it stays in eval mode."""
        return super().train(False)

    @property
    def feature_stride(self) -> int:
        raise NotImplementedError

    @property
    def embed_dim(self) -> int:
        raise NotImplementedError

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) CLIP-normalised images -> (B, C, H/stride, W/stride) map."""
        raise NotImplementedError

    def pool(self, feature_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        """(B, C, h, w) map + boxes per image (pixels) -> (R, D) normalised embeddings."""
        raise NotImplementedError

    def _roi_align(self, feature_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        rois = _boxes_to_rois(boxes, feature_map.device).to(feature_map.dtype)
        return roi_align(
            feature_map,
            rois,
            output_size=self.pooler_resolution,
            spatial_scale=1.0 / self.feature_stride,
            sampling_ratio=self.sampling_ratio,
            aligned=True,
        )

    def forward(self, images: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        """
        Args:
            images: (B, 3, H, W) CLIP-normalised images; H, W multiples of the tower's stride
                (patch size for ViTs).
            boxes: per image, (R_i, 4) pixel boxes (tensor or ``Boxes``); a single tensor for B=1.
        Returns:
            (sum R_i, D) L2-normalised region embeddings, in the order of the boxes.
        """
        with torch.no_grad():
            return self.pool(self.extract(images), boxes)


@register_vlm_scorer("attnpool")
class AttnPoolRegionScorer(VLMRegionScorer):
    """F-VLM (METHODS.md 2.3): RoIAlign on frozen C5, then CLIP's attention pool.

    The RoIAlign output must equal the attention-pool grid (its positional embedding has
    grid² + 1 entries; METHODS 6.4), 7 for RN50 at 224.
    """

    tower_kind = "resnet"

    def __init__(self, visual: nn.Module, *, pooler_resolution: int = 0, sampling_ratio: int = -1):
        """
        Args:
            visual: open_clip ``ModifiedResNet``.
            pooler_resolution: 0 = the attention-pool grid; any other value must equal it.
            sampling_ratio: RoIAlign sampling ratio (<= 0 adaptive).
        """
        n_pos = visual.attnpool.positional_embedding.shape[0] - 1
        grid = int(round(n_pos**0.5))
        if pooler_resolution and pooler_resolution != grid:
            raise ValueError(
                f"VLM_SCORER.POOLER_RESOLUTION {pooler_resolution} does not fit the CLIP "
                f"attention pool, whose positional embedding covers a {grid}x{grid} grid "
                f"(image_size / 32, METHODS 2.3). Set it to {grid} or 0."
            )
        super().__init__(pooler_resolution=grid, sampling_ratio=sampling_ratio)
        self.visual = visual
        self._freeze()

    @property
    def feature_stride(self) -> int:
        return 32

    @property
    def embed_dim(self) -> int:
        return self.visual.attnpool.c_proj.out_features

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        x = v.stem(images)
        return v.layer4(v.layer3(v.layer2(v.layer1(x))))  # C5, stride 32

    def pool(self, feature_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        crops = self._roi_align(feature_map, boxes)  # (R, C, g, g)
        if crops.shape[0] == 0:
            return crops.new_zeros((0, self.embed_dim))
        emb = self.visual.attnpool(crops)  # CLIP AttentionPool2d: mean-token query + pos. emb.
        return F.normalize(emb, dim=-1)


class _ViTTowerScorer(VLMRegionScorer):
    """Shared part of the ViT scorers: a frozen ``DenseCLIPViT`` wrapping the open_clip tower."""

    tower_kind = "vit"

    def __init__(self, visual: nn.Module, *, pooler_resolution: int, sampling_ratio: int = -1):
        super().__init__(pooler_resolution=pooler_resolution, sampling_ratio=sampling_ratio)
        self.dense = DenseCLIPViT(visual)
        self._freeze()

    @property
    def visual(self) -> nn.Module:
        return self.dense.visual

    @property
    def feature_stride(self) -> int:
        return self.dense.patch_size[0]

    @property
    def embed_dim(self) -> int:
        return self.dense.embed_dim


@register_vlm_scorer("dense")
class DenseRegionScorer(_ViTTowerScorer):
    """F-ViT / CLIPSelf (METHODS.md 3.2): 1x1 RoIAlign (aligned, adaptive sampling) on the
    L2-normalised dense map (value-only last block), then L2-normalised again."""

    def __init__(
        self,
        visual: nn.Module,
        *,
        pooler_resolution: int = 0,
        sampling_ratio: int = -1,
        window_size: int = 0,
        window_block_indexes: Sequence[int] = (),
    ):
        super().__init__(
            visual, pooler_resolution=pooler_resolution or 1, sampling_ratio=sampling_ratio
        )
        self.window_size = int(window_size)
        self.window_block_indexes = tuple(window_block_indexes)

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense(
            images, window_size=self.window_size, window_block_indexes=self.window_block_indexes
        )

    def pool(self, feature_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        crops = self._roi_align(feature_map, boxes)  # (R, D, r, r)
        return F.normalize(crops.mean(dim=(2, 3)), dim=-1)


@register_vlm_scorer("avgpool")
class AvgPoolRegionScorer(_ViTTowerScorer):
    """RO-ViT (METHODS.md 4.3): RoIAlign (14x14) on the last ViT map, then the mean.

    The map is the last block's patch tokens after the final norm and projection (CLIP space;
    projection is linear, so mean-then-project equals project-then-mean). A tower whose
    ``final_ln_after_pool`` is set pools first and normalises after, as its own pooling does.
    """

    def __init__(self, visual: nn.Module, *, pooler_resolution: int = 0, sampling_ratio: int = -1):
        super().__init__(
            visual, pooler_resolution=pooler_resolution or 14, sampling_ratio=sampling_ratio
        )
        self.ln_after_pool = bool(getattr(self.visual, "final_ln_after_pool", False))

    def extract(self, images: torch.Tensor) -> torch.Tensor:
        x, grid = self.dense.embed(images)
        x, _ = self.dense.run_blocks(x, grid)
        if self.ln_after_pool:
            return DenseCLIPViT.tokens_to_map(x, grid)  # pooled, then ln_post + proj
        return self.dense.project(x, grid, normalize=False)

    def pool(self, feature_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        crops = self._roi_align(feature_map, boxes)
        pooled = crops.mean(dim=(2, 3))  # average pool (RO-ViT roi_head_fn = AveragePool)
        if self.ln_after_pool:
            pooled = self.visual.ln_post(pooled) @ self.visual.proj
        return F.normalize(pooled, dim=-1)


def _tower_kind(visual: nn.Module) -> str:
    if is_open_clip_resnet(visual):
        return "resnet"
    if is_open_clip_vit(visual):
        return "vit"
    return type(visual).__name__


def find_clip_tower(module: nn.Module) -> Optional[nn.Module]:
    """The open_clip vision tower inside a backbone (or any module), or None."""
    for m in module.modules():
        if is_open_clip_resnet(m) or is_open_clip_vit(m):
            return m
    return None


def build_vlm_scorer(
    cfg_or_name,
    visual: Optional[nn.Module] = None,
    *,
    backbone: Optional[nn.Module] = None,
    frozen_copy: Optional[bool] = None,
    **kwargs,
) -> Optional[VLMRegionScorer]:
    """Build a VLM region scorer.

    Args:
        cfg_or_name: a Detectron2 config (reads ``MODEL.OVD.VLM_SCORER.*`` and, without a tower,
            ``MODEL.OVD.BACKBONE`` / ``MODEL.OVD.CLIP`` to build one) or a scorer name
            ("attnpool", "dense", "avgpool").
        visual: the open_clip vision tower (``clip_model.visual``) to score with.
        backbone: alternatively, a backbone containing a CLIP tower (e.g. the detector's).
        frozen_copy: deep-copy the tower (default: ``VLM_SCORER.FROZEN_COPY`` with a config,
            True with a name), so the scorer stays frozen while the backbone trains. Without a
            copy the scorer freezes the tower it is given; sharing a backbone's trainable tower
            is refused.
        kwargs: with a name, the scorer's keyword arguments (``pooler_resolution``, ...).
    Returns:
        the scorer, or None when the config's ``VLM_SCORER.NAME`` is "".
    Raises:
        KeyError: unknown scorer name. ValueError: the scorer does not fit the tower type
        (a ResNet scorer on a ViT or the reverse) or the tower cannot be found.
    """
    cfg = None
    if isinstance(cfg_or_name, str):
        name = cfg_or_name
    else:
        cfg = cfg_or_name
        sc = cfg.MODEL.OVD.VLM_SCORER
        name = sc.NAME
        if not name:
            return None
        kwargs = {
            "pooler_resolution": sc.POOLER_RESOLUTION,
            "sampling_ratio": sc.POOLER_SAMPLING_RATIO,
            **kwargs,
        }
        if frozen_copy is None:
            frozen_copy = sc.FROZEN_COPY
    if name not in VLM_SCORERS:
        raise KeyError(
            f"Unknown VLM scorer {name!r} (MODEL.OVD.VLM_SCORER.NAME); known: "
            f"{sorted(VLM_SCORERS)}."
        )
    cls = VLM_SCORERS[name]
    frozen_copy = True if frozen_copy is None else bool(frozen_copy)

    from_backbone = visual is None and backbone is not None
    if from_backbone:
        visual = find_clip_tower(backbone)
        if visual is None:
            raise ValueError(
                f"VLM scorer {name!r}: the backbone {type(backbone).__name__} holds no open_clip "
                "vision tower; pass the tower (clip_model.visual) or use a CLIP backbone."
            )
    if visual is None:
        if cfg is None:
            raise ValueError(f"VLM scorer {name!r} needs a CLIP tower, a backbone or a config.")
        model_name, pretrained = clip_backbone_source(cfg)
        visual = build_clip_visual(model_name, pretrained)
        frozen_copy = False  # freshly built: nothing else holds it
    elif _tower_kind(visual) not in ("resnet", "vit") and isinstance(
        getattr(visual, "visual", None), nn.Module
    ):
        visual = visual.visual  # a whole CLIP model (or a DenseCLIPViT) was passed

    kind = _tower_kind(visual)
    if kind != cls.tower_kind:
        fits = sorted(n for n, c in VLM_SCORERS.items() if c.tower_kind == kind)
        raise ValueError(
            f"VLM scorer {name!r} needs a CLIP {cls.tower_kind} tower, got a {kind} tower "
            f"({type(visual).__name__}). Scorers for this tower: {fits or 'none'} "
            "(MODEL.OVD.VLM_SCORER.NAME)."
        )
    if frozen_copy:
        visual = copy.deepcopy(visual)
    elif from_backbone and any(p.requires_grad for p in visual.parameters()):
        raise ValueError(
            f"VLM scorer {name!r} would share a trainable CLIP tower and freeze it. Set "
            "MODEL.OVD.VLM_SCORER.FROZEN_COPY True (score with a frozen copy while the backbone "
            "is fine-tuned) or freeze the backbone (MODEL.OVD.BACKBONE.FREEZE True)."
        )
    scorer = cls(visual, **kwargs)
    logger.info(
        "VLM scorer %r on a %s %s tower, RoIAlign %dx%d at stride %d",
        name,
        "frozen copy of the" if frozen_copy else "shared",
        kind,
        scorer.pooler_resolution,
        scorer.pooler_resolution,
        scorer.feature_stride,
    )
    return scorer
