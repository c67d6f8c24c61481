"""VLM region scorers: L2-normalised CLIP-space embeddings of boxes, for test-time score fusion.

**Contract.** A scorer is an ``nn.Module`` (:class:`VLMRegionScorer`) called as::

    scorer(images, features, boxes, box_features) -> (R, D) L2-normalised embeddings

- ``images``: (B, 3, H, W) the detector's normalised, padded input (``ImageList.tensor``);
- ``features``: the detector backbone's output dict (a scorer sharing the frozen CLIP tower reads
  ``features[CLIP_TOWER_FEATURE]``);
- ``boxes``: per image, (R_i, 4) boxes in input pixels (``Boxes`` or tensors);
- ``box_features``: (R, C, r, r) the ROI heads' pooled box features of the same boxes;
- returns (sum R_i, D), in the order of the boxes; D is the text classifier's width.

Scorers are built by name (``MODEL.OVD.VLM_SCORER.NAME``) from :data:`VLM_SCORER_REGISTRY`, whose
entries are builders ``name(cfg, *, backbone=None, box_head=None, box_predictor=None) ->
VLMRegionScorer``. Registered here:

- ``attnpool`` (F-VLM): RoIAlign on the frozen C5 map at the attention-pool grid, then CLIP's own
  attention pool (:func:`attention_pool_regions`: exact, from maps projected once); with
  ``CROP_STAGE`` "res4", on the C4 map through the last stage (RegionCLIP's region feature).
- ``dense`` (F-ViT / CLIPSelf): 1x1 RoIAlign on the CLIPSelf dense map (value-only last block).
- ``avgpool`` (RO-ViT): RoIAlign (14x14) on the last ViT map projected to CLIP space, the mean.
- ``vild_image`` (ViLD-ensemble): ViLD's second, distilled branch on the pooled box features.

With ``CROP_STAGE`` "image" a tower scorer crops the pixels instead of a map: each region, at
every scale of ``IMAGE_CROP_SCALES``, is resampled to the tower's input size and run through the
tower, whose whole map the scorer then pools by its own rule (ViLD's "CLIP on cropped regions",
its 1x + 1.5x ensemble). A departure from F-VLM, F-ViT and RO-ViT, for small towers that lose a
region's class when its tokens see the whole image.

**One tower.** When the detector's backbone holds the frozen CLIP tower (F-VLM, F-ViT), the tower
scorers read the backbone's own map (the backbone exposes it under ``CLIP_TOWER_FEATURE``) and
keep no copy. A frozen copy is taken only when the backbone trains (RO-ViT, a fine-tuned F-ViT)
or when ``MODEL.OVD.VLM_SCORER.FROZEN_COPY`` asks for one. Without a CLIP backbone (a user's own
meta-architecture) the scorer builds its tower from ``MODEL.OVD.CLIP``.

**Crop convention** (``MODEL.OVD.VLM_SCORER.CROP_CONVENTION``): "official" crops as each
method's official code does: F-VLM and RO-ViT (fvlm ``multilevel_crop_and_resize``) take one
sample per bin with no half-pixel shift (torchvision ``roi_align(aligned=False,
sampling_ratio=1)``; equal for boxes of at least one cell), CLIPSelf uses ``aligned=True`` with
adaptive sampling. "detectron2" uses Detectron2's ROIAlignV2 convention (``aligned=True``,
``POOLER_SAMPLING_RATIO``) for every scorer.
"""

import copy
import logging
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from detectron2.structures import Boxes
from detectron2.utils.registry import Registry
from torch import nn
from torchvision.ops import roi_align

from ..clip.crops import scale_boxes
from ..clip.dense import DenseCLIPViT, checked_tile_stride, is_open_clip_vit
from ..clip.loading import clip_image_size
from .backbone.clip_resnet import CLIPResNet, is_open_clip_resnet
from .backbone.clip_vit import CLIPViT
from .backbone.utils import CLIP_TOWER_FEATURE, build_clip_visual, clip_backbone_source

__all__ = [
    "CLIP_TOWER_FEATURE",
    "VLM_SCORER_REGISTRY",
    "AttnPoolRegionScorer",
    "AvgPoolRegionScorer",
    "DenseRegionScorer",
    "VLMRegionScorer",
    "ViLDImageBranchScorer",
    "attention_pool_regions",
    "build_vlm_scorer",
    "find_clip_tower",
]

logger = logging.getLogger(__name__)

BoxesLike = Union[torch.Tensor, Boxes, Sequence[Union[torch.Tensor, Boxes]]]

VLM_SCORER_REGISTRY = Registry("OVD_VLM_SCORER")
VLM_SCORER_REGISTRY.__doc__ = """
VLM region scorers, by name (``MODEL.OVD.VLM_SCORER.NAME``). Each entry is a builder
``name(cfg, *, backbone=None, box_head=None, box_predictor=None) -> VLMRegionScorer``; the module
it returns follows the call contract of :mod:`ovdet_plugin.modeling.vlm_scorers`.
"""

CROP_CONVENTIONS = ("official", "detectron2")
# VLM_SCORER.LAST_BLOCK: the scorer's own (paper) mode, or the ViT's last block forced either way.
LAST_BLOCK_CHOICES = ("default", "value_only", "attention")
# Regions per chunk of the attention pool: bounds its (chunk, heads + g², H W) intermediates.
ATTNPOOL_CHUNK = 256
# Region crops per tower pass with CROP_STAGE "image": bounds the tower's activations.
IMAGE_CROP_CHUNK = 256


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
    """Base class of the scorers: see the module docstring for the call contract."""

    @property
    def embed_dim(self) -> int:
        """D, the width of the returned embeddings."""
        raise NotImplementedError

    def forward(
        self,
        images: torch.Tensor,
        features: Dict[str, torch.Tensor],
        boxes: BoxesLike,
        box_features: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        raise NotImplementedError


class _TowerScorer(VLMRegionScorer):
    """A scorer on a frozen open_clip vision tower: RoIAlign on one of its maps, then a pooling.

    The tower is either owned (a registered submodule: a frozen copy or a tower built for the
    scorer) or shared with the detector's frozen backbone (held outside the module tree, so it
    is neither saved twice nor counted twice). With ``reads_backbone_map`` the scorer pools the
    backbone's ``CLIP_TOWER_FEATURE`` map; otherwise it runs the tower on the images itself.
    """

    tower_kind: str = ""  # "resnet" or "vit"
    #: (aligned, sampling_ratio) of the method's official code (the "official" crop convention)
    official_crop = (True, -1)
    #: where a region can be cropped (``MODEL.OVD.VLM_SCORER.CROP_STAGE``): "res5" = the
    #: scorer's own map (C5 of a ResNet, the last block of a ViT), "image" = the pixels
    crop_stages = ("res5", "image")

    def __init__(
        self,
        visual: nn.Module,
        *,
        pooler_resolution: int,
        aligned: Optional[bool] = None,
        sampling_ratio: Optional[int] = None,
        shared: bool = False,
        reads_backbone_map: bool = False,
        crop_stage: str = "res5",
        image_crop_scales: Sequence[float] = (1.0, 1.5),
    ):
        """
        Args:
            visual: the open_clip vision tower (frozen here when owned).
            pooler_resolution: RoIAlign output size.
            aligned, sampling_ratio: torchvision ``roi_align`` arguments; None = the method's
                official crop (``official_crop``).
            shared: the tower belongs to the detector's frozen backbone (not a submodule here).
            reads_backbone_map: pool ``features[CLIP_TOWER_FEATURE]`` instead of running the
                tower on the images.
            crop_stage: one of ``crop_stages``; "image" crops the pixels
                (:meth:`pool_image_crops`).
            image_crop_scales: with ``crop_stage`` "image", the box enlargements whose crops'
                embeddings are summed (ViLD's 1x + 1.5x ensemble by default).
        """
        super().__init__()
        if crop_stage not in self.crop_stages:
            raise ValueError(
                f"MODEL.OVD.VLM_SCORER.CROP_STAGE must be one of {list(self.crop_stages)}, got "
                f"{crop_stage!r}."
            )
        scales = tuple(float(s) for s in image_crop_scales)
        if crop_stage == "image" and (not scales or min(scales) <= 0):
            raise ValueError(
                f"MODEL.OVD.VLM_SCORER.IMAGE_CROP_SCALES must list positive box enlargements "
                f"(e.g. [1.0, 1.5]), got {list(image_crop_scales)}."
            )
        if crop_stage == "image" and reads_backbone_map:
            raise ValueError("A scorer on image crops runs the tower itself: no backbone map.")
        self.crop_stage = crop_stage
        self.image_crop_scales = scales
        self.pooler_resolution = int(pooler_resolution)
        self.aligned = bool(self.official_crop[0] if aligned is None else aligned)
        self.sampling_ratio = int(
            self.official_crop[1] if sampling_ratio is None else sampling_ratio
        )
        self.shared = bool(shared)
        self.reads_backbone_map = bool(reads_backbone_map)
        if shared:  # a plain attribute: not a submodule, not in this module's state dict
            object.__setattr__(self, "visual", visual)
        else:
            self.visual = visual
            for p in visual.parameters():
                p.requires_grad_(False)
        visual.eval()

    def train(self, mode: bool = True):
        """The scorer is always frozen: it stays in eval mode."""
        return super().train(False)

    @property
    def tower_stride(self) -> int:
        """Stride of the tower map (:meth:`tower_map`) in input pixels."""
        raise NotImplementedError

    def tower_map(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images -> (B, C, H/stride, W/stride): the tower map the scorer reads, as
        the backbone exposes it under ``CLIP_TOWER_FEATURE``."""
        raise NotImplementedError

    def pool(self, tower_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        """(B, C, h, w) tower map + boxes per image (pixels) -> (R, D) normalised embeddings."""
        raise NotImplementedError

    def pool_whole(self, tower_map: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) tower maps of region crops -> (N, D): the scorer's pooling over each whole
        map, as the tower pools an image (not normalised)."""
        raise NotImplementedError

    def pool_image_crops(self, images: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        """(B, 3, H, W) input + boxes per image -> (R, D) normalised embeddings of the regions
        cut from the pixels (``crop_stage`` "image").

        ViLD's crops (Gu et al. 2022, Sec. 3.2: proposals cropped, resized to the CLIP input,
        1x and 1.5x embeddings ensembled; its release has no crop code, and this is the crop of
        :func:`~ovdet_plugin.clip.crops.roi_align_crops`, ViLD's targets here, without clipping
        the enlarged box): each box enlarged by every scale of ``image_crop_scales`` about its
        centre (not clipped; outside the image RoIAlign reads zeros, the input's mean colour),
        resampled to the tower's input size by an aligned RoIAlign with 2 samples per bin
        (aspect ratio not kept), run through the tower (:meth:`tower_map`) and pooled whole
        (:meth:`pool_whole`); the scales' normalised embeddings are summed and normalised.
        ``IMAGE_CROP_CHUNK`` crops per tower pass.
        """
        rois = _boxes_to_rois(boxes, images.device).to(images.dtype)
        tracing = torch.jit.is_tracing()  # traced for export: one chunk (a count would be frozen)
        if not tracing and rois.shape[0] == 0:
            return images.new_zeros((0, self.embed_dim))
        size = clip_image_size(self.visual)
        total = 0
        for scale in self.image_crop_scales:
            # not clipped: outside the image RoIAlign reads zeros (the normalised mean colour)
            crop_rois = rois
            if scale != 1.0:
                crop_rois = torch.cat([rois[:, :1], scale_boxes(rois[:, 1:], scale)], dim=1)
            parts = [crop_rois] if tracing else crop_rois.split(IMAGE_CROP_CHUNK)
            emb = torch.cat(
                [
                    self.pool_whole(self.tower_map(roi_align(images, part, size, 1.0, 2, True)))
                    for part in parts  # one chunk's crops at a time
                ]
            )
            total = total + F.normalize(emb, dim=-1)
        return F.normalize(total, dim=-1)

    def _roi_align(self, feature_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        rois = _boxes_to_rois(boxes, feature_map.device).to(feature_map.dtype)
        return self._roi_align_rois(feature_map, rois)

    def _roi_align_rois(self, feature_map: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """(R, 5) RoIs -> (R, C, r, r) crops of the tower map, with this scorer's crop settings."""
        return roi_align(
            feature_map,
            rois,
            output_size=self.pooler_resolution,
            spatial_scale=1.0 / self.tower_stride,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )

    def forward(self, images, features=None, boxes=(), box_features=None) -> torch.Tensor:
        with torch.no_grad():
            if self.crop_stage == "image":
                return self.pool_image_crops(images, boxes)
            if self.reads_backbone_map:
                if not features or CLIP_TOWER_FEATURE not in features:
                    raise RuntimeError(
                        f"The VLM scorer reads the backbone's {CLIP_TOWER_FEATURE!r} map, which "
                        "the backbone output lacks: pass the detector's backbone features."
                    )
                tower_map = features[CLIP_TOWER_FEATURE]
            else:
                tower_map = self.tower_map(images)
            return self.pool(tower_map, boxes)

    def extra_repr(self) -> str:
        source = "backbone map" if self.reads_backbone_map else "own forward"
        crop = f"crop_stage={self.crop_stage}"
        if self.crop_stage == "image":
            crop += f" scales={list(self.image_crop_scales)}"
        return (
            f"tower={'shared' if self.shared else 'owned'}, reads={source}, "
            f"roi_align={self.pooler_resolution}x{self.pooler_resolution} "
            f"aligned={self.aligned} sampling_ratio={self.sampling_ratio}, {crop}"
        )


def roi_align_weights(
    rois: torch.Tensor, size, output_size: int, spatial_scale: float, sampling_ratio: int, aligned
) -> torch.Tensor:
    """The bilinear weights RoIAlign applies: (R, g², H·W) with ``roi_align(x)[r, c, j] =
    sum_p weights[r, j, p] x[c, p]`` for any map x of spatial ``size`` (H, W). Obtained from
    torchvision's ``roi_align`` itself on a one-hot map per pixel, so every convention (aligned,
    sampling ratio, boxes partly outside the image) is RoIAlign's own."""
    H, W = size
    eye = torch.eye(H * W, dtype=torch.float32, device=rois.device).reshape(1, H * W, H, W)
    one_image = torch.cat([torch.zeros_like(rois[:, :1]), rois[:, 1:]], dim=1)
    weights = roi_align(eye, one_image, output_size, spatial_scale, sampling_ratio, aligned)
    return weights.flatten(2).transpose(1, 2)


def attention_pool_regions(
    attnpool: nn.Module,
    feature_map: torch.Tensor,
    rois: torch.Tensor,
    *,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    chunk: int = ATTNPOOL_CHUNK,
) -> torch.Tensor:
    """open_clip's ``AttentionPool2d`` on the RoIAlign crop of every region, computing only what
    it returns, from maps projected once.

    For a region, RoIAlign gives tokens ``x_j = sum_p w_jp F_p`` (j = 1..g², F the C5 map).
    open_clip prepends the mean token x_0, adds the positional embedding and runs attention for
    all 1 + g² queries, keeping the first. Only that query matters, and projections and RoIAlign are
    linear, so with ``Q, K, V`` the C5 map projected once **without** biases (per pixel) and
    ``wbar`` the mean of a region's weights (the weights of x_0)::

        q          = Q^T wbar + (W_q pos_0 + b_q)                      (the only query)
        logit_hj   = sum_p w_jp (q_h . K_h,p) + q_h . (W_k pos_j + b_k)_h
        out_h      = V_h^T (sum_j a_hj w_j) + sum_j a_hj (W_v pos_j + b_v)_h

    The biases and positional embeddings are added after the pooled terms, exactly as open_clip
    adds them after its RoIAlign crops; RoIAlign's weights need not sum to one (boxes partly
    outside the image). The attention logits are formed on the map (``q . K`` over the grid) and
    pooled with the region's RoIAlign weights, so no C-channel feature is ever pooled per region.
    Cost: 3 H W C² once per image, then about 3 H W C + C D per region, instead of one
    C-channel RoIAlign plus (1 + g²)(3 C² + C D) per region.

    Args:
        attnpool: open_clip ``AttentionPool2d`` (positional embedding of g² + 1 entries).
        feature_map: (B, C, H, W) C5 map.
        rois: (R, 5) boxes (batch index, x0, y0, x1, y1) in input pixels.
        spatial_scale, sampling_ratio, aligned: the RoIAlign crop (g = the pool's grid).
        chunk: regions per chunk (memory: chunk x (heads + g²) x H W floats).
    Returns:
        (R, D) the pool's output (not normalised).
    """
    B, C, H, W = feature_map.shape
    heads = attnpool.num_heads
    dh = C // heads
    n = int(attnpool.positional_embedding.shape[0]) - 1
    g = int(round(n**0.5))
    q_proj, k_proj, v_proj = attnpool.q_proj, attnpool.k_proj, attnpool.v_proj
    pos = attnpool.positional_embedding.to(feature_map.dtype)
    pos_q = F.linear(pos[0], q_proj.weight, q_proj.bias)  # (C,)
    pos_k = F.linear(pos, k_proj.weight, k_proj.bias).reshape(1 + n, heads, dh)
    pos_v = F.linear(pos, v_proj.weight, v_proj.bias).reshape(1 + n, heads, dh)
    out = feature_map.new_zeros((rois.shape[0], attnpool.c_proj.out_features))
    tracing = torch.jit.is_tracing()  # traced for export: one chunk (a count would be frozen)
    for image in range(B):
        index = (rois[:, 0] == image).nonzero().flatten()
        flat = feature_map[image].flatten(1).t()  # (H W, C)
        q_map = F.linear(flat, q_proj.weight)  # projections without bias, once per image
        k_map = F.linear(flat, k_proj.weight).reshape(H * W, heads, dh).permute(1, 2, 0)
        v_map = F.linear(flat, v_proj.weight).reshape(H * W, heads, dh).transpose(0, 1)
        for part in [index] if tracing else index.split(chunk):
            weights = roi_align_weights(
                rois[part], (H, W), g, spatial_scale, sampling_ratio, aligned
            )  # (r, g², H W)
            mean_weights = weights.mean(dim=1)  # the mean token's weights (r, H W)
            q = (mean_weights @ q_map + pos_q).reshape(-1, heads, dh) * dh**-0.5  # (r, h, d)
            on_map = torch.bmm(q.transpose(0, 1), k_map).transpose(0, 1)  # q . K: (r, h, H W)
            pooled = torch.bmm(on_map, weights.transpose(1, 2))  # (r, h, g²)
            logits = torch.cat([pooled.mean(dim=-1, keepdim=True), pooled], dim=-1)
            attn = (logits + torch.einsum("rhd,jhd->rhj", q, pos_k)).softmax(dim=-1)
            on_pixels = torch.bmm(attn[:, :, 1:], weights) + attn[:, :, :1] * mean_weights[:, None]
            values = torch.bmm(on_pixels.transpose(0, 1), v_map).transpose(0, 1)  # (r, h, d)
            values = values + torch.einsum("rhj,jhd->rhd", attn, pos_v)
            out[part] = attnpool.c_proj(values.reshape(-1, C))
    return out


class AttnPoolRegionScorer(_TowerScorer):
    """F-VLM (Kuo et al. 2023, Sec. 3.3; fvlm/modeling/task_heads.py ``ClipFasterRCNNHead``):
    RoIAlign on the frozen C5 map (stride 32), then CLIP's attention pool.

    The RoIAlign output must equal the attention-pool grid (its positional embedding has
    grid² + 1 entries): 7 for RN50 at 224, 9 / 12 / 14 for RN50x4 / x16 / x64.

    With ``crop_stage`` "res4" the crop is taken one stage earlier: RoIAlign on the frozen C4 map
    (stride 16) at twice the grid, the tower's last stage (``layer4``) run on each crop, then the
    attention pool: RegionCLIP's region feature (Zhong et al. 2022; its ``CLIPRes5ROIHeads``),
    and the C4 crop + res5 head of Detectron2's ``Res5ROIHeads``. A departure from F-VLM, for a
    small input whose C5 cells are as large as its objects (``MODEL.OVD.VLM_SCORER.CROP_STAGE``).
    With ``crop_stage`` "image" each region's pixels go through the whole tower
    (:meth:`pool_image_crops`).
    """

    tower_kind = "resnet"
    official_crop = (False, 1)  # fvlm multilevel_crop_and_resize: no half-pixel shift
    crop_stages = ("res5", "res4", "image")

    def __init__(
        self, visual: nn.Module, *, pooler_resolution: int = 0, crop_stage: str = "res5", **kwargs
    ):
        n_pos = visual.attnpool.positional_embedding.shape[0] - 1
        grid = int(round(n_pos**0.5))
        if pooler_resolution and pooler_resolution != grid:
            raise ValueError(
                f"VLM_SCORER.POOLER_RESOLUTION {pooler_resolution} does not fit the CLIP "
                f"attention pool, whose positional embedding covers a {grid}x{grid} grid "
                f"(image_size / 32). Set it to {grid} or 0."
            )
        # res4: the crop is grid x grid after layer4's stride 2
        crop_size = 2 * grid if crop_stage == "res4" else grid
        super().__init__(visual, pooler_resolution=crop_size, crop_stage=crop_stage, **kwargs)

    @property
    def tower_stride(self) -> int:
        return 16 if self.crop_stage == "res4" else 32

    @property
    def embed_dim(self) -> int:
        return self.visual.attnpool.c_proj.out_features

    def tower_map(self, images: torch.Tensor) -> torch.Tensor:
        v = self.visual
        c4 = v.layer3(v.layer2(v.layer1(v.stem(images))))  # stride 16
        return c4 if self.crop_stage == "res4" else v.layer4(c4)  # C5, stride 32

    def pool_whole(self, tower_map: torch.Tensor) -> torch.Tensor:
        return self.visual.attnpool(tower_map)  # CLIP's own pooling of a C5 map

    def pool(self, tower_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        if self.crop_stage == "res4":
            return F.normalize(self._pool_c4_crops(tower_map, boxes), dim=-1)
        rois = _boxes_to_rois(boxes, tower_map.device).to(tower_map.dtype)
        emb = attention_pool_regions(
            self.visual.attnpool,
            tower_map,
            rois,
            spatial_scale=1.0 / self.tower_stride,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
        )
        return F.normalize(emb, dim=-1)

    def _pool_c4_crops(self, c4: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        """(B, C4, h, w) map -> (R, D): each region's (2g, 2g) C4 crop through ``layer4`` (to the
        pool's own g x g grid) and the attention pool's own forward, ATTNPOOL_CHUNK regions at a
        time (memory: chunk x C4 x 4g² floats, plus layer4's activations)."""
        rois = _boxes_to_rois(boxes, c4.device).to(c4.dtype)
        tracing = torch.jit.is_tracing()  # traced for export: one chunk (a count would be frozen)
        parts = [rois] if tracing else rois.split(ATTNPOOL_CHUNK)  # >= 1 part, even for 0 RoIs
        v = self.visual
        return torch.cat([v.attnpool(v.layer4(self._roi_align_rois(c4, part))) for part in parts])


class _ViTTowerScorer(_TowerScorer):
    """Shared part of the ViT scorers: the tower wrapped in :class:`DenseCLIPViT`.

    With ``window`` > 0 the tower runs on ``window`` x ``window``-pixel windows of the image
    (every ``window_stride`` pixels, the last row and column of windows flush with the image's
    edge) and the overlapping maps are averaged: each token attends only inside its window,
    at the size a small tower was pretrained at. The papers run the tower on the whole image
    (``window`` 0); see ``MODEL.OVD.VLM_SCORER.TOWER_WINDOW``.
    """

    tower_kind = "vit"
    #: the last block the scorer's map comes from runs value-only (CLIPSelf) or not
    value_only_last: bool = False

    def __init__(
        self,
        visual: nn.Module,
        *,
        window: int = 0,
        window_stride: int = 0,
        value_only_last: Optional[bool] = None,
        **kwargs,
    ):
        """``value_only_last``: run the tower's last block value-only or with its attention;
        None = the scorer's paper (the class attribute)."""
        super().__init__(visual, **kwargs)
        if value_only_last is not None:
            self.value_only_last = bool(value_only_last)
        # the wrapper adds no parameter; a plain attribute keeps the tower out of the module tree
        object.__setattr__(self, "dense", DenseCLIPViT(visual))
        self.window = int(window)
        self.window_stride = checked_tile_stride(
            window, window_stride, self.dense.patch_size[0], "MODEL.OVD.VLM_SCORER.TOWER_WINDOW"
        )

    @property
    def tower_stride(self) -> int:
        return self.dense.patch_size[0]

    @property
    def embed_dim(self) -> int:
        return self.dense.embed_dim

    def tower_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.dense.last_block_map(
            images,
            value_only_last=self.value_only_last,
            tile=self.window,
            tile_stride=self.window_stride,
        )


class DenseRegionScorer(_ViTTowerScorer):
    """F-ViT / CLIPSelf (Wu et al. 2024; CLIPSelf ``extract_roi_features``, F-ViT
    ``FViTRoIHead``): 1x1 RoIAlign on the L2-normalised dense map (value-only last block, final
    norm, projection), then L2-normalised again."""

    value_only_last = True
    official_crop = (True, -1)  # CLIPSelf extract_roi_features: aligned, adaptive sampling

    def __init__(self, visual: nn.Module, *, pooler_resolution: int = 0, **kwargs):
        super().__init__(visual, pooler_resolution=pooler_resolution or 1, **kwargs)

    def pool(self, tower_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        dense = self.dense.project_map(tower_map)  # (B, D, h, w), normalised per location
        crops = self._roi_align(dense, boxes)
        return F.normalize(crops.mean(dim=(2, 3)), dim=-1)

    def pool_whole(self, tower_map: torch.Tensor) -> torch.Tensor:
        return self.dense.project_map(tower_map).mean(dim=(2, 3))  # the mean of the dense map


class AvgPoolRegionScorer(_ViTTowerScorer):
    """RO-ViT (Kim et al. 2023, Sec. 3.3; DITO ``AveragePool`` roi_head_fn): RoIAlign (14x14) on
    the last ViT map in CLIP space, then the mean.

    Final norm and projection: the projection is linear, so mean-then-project equals
    project-then-mean; a tower whose ``final_ln_after_pool`` is set pools first and normalises
    after, as its own pooling does.
    """

    official_crop = (False, 1)  # the F-VLM codebase's crop_and_resize (DITO)

    def __init__(self, visual: nn.Module, *, pooler_resolution: int = 0, **kwargs):
        super().__init__(visual, pooler_resolution=pooler_resolution or 14, **kwargs)
        self.ln_after_pool = bool(getattr(self.visual, "final_ln_after_pool", False))

    def pool(self, tower_map: torch.Tensor, boxes: BoxesLike) -> torch.Tensor:
        pooled = self._average(self._roi_align(self._to_pool_space(tower_map), boxes))
        return F.normalize(pooled, dim=-1)

    def pool_whole(self, tower_map: torch.Tensor) -> torch.Tensor:
        # open_clip's own average pool of the patch tokens
        return self._average(self._to_pool_space(tower_map))

    def _to_pool_space(self, tower_map: torch.Tensor) -> torch.Tensor:
        """The map the average is taken on: projected per token, unless ``ln_after_pool``."""
        if self.ln_after_pool:
            return tower_map
        return self.dense.project_map(tower_map, normalize=False)

    def _average(self, maps: torch.Tensor) -> torch.Tensor:
        """(N, C, r, r) maps from :meth:`_to_pool_space` -> (N, D), their mean."""
        pooled = maps.mean(dim=(2, 3))
        if self.ln_after_pool:
            pooled = self.visual.ln_post(pooled) @ self.visual.proj
        return pooled


class ViLDImageBranchScorer(VLMRegionScorer):
    """ViLD-ensemble's image branch (Gu et al. 2022, Sec. 3.4; vild ``visual_feature_distill:
    double_branch``): its own copy of the box head and projection (the ``distill-*`` layers),
    trained by the ViLD-image distillation loss on the distillation RoIs only, and read at test
    time on the pooled box features. Trainable, unlike the tower scorers."""

    def __init__(self, box_head: nn.Module, projection: nn.Module):
        """
        Args:
            box_head: a copy of the detector's box head (same architecture, own weights).
            projection: a copy of the predictor's projection to the CLIP width.
        """
        super().__init__()
        self.box_head = box_head
        self.projection = projection

    @property
    def embed_dim(self) -> int:
        return self.projection.out_features

    def embed(self, box_features: torch.Tensor) -> torch.Tensor:
        """(R, C, r, r) pooled box features -> (R, D) normalised embeddings."""
        x = self.box_head(box_features).flatten(start_dim=1)
        return F.normalize(self.projection(x), dim=1)

    def forward(self, images, features=None, boxes=(), box_features=None) -> torch.Tensor:
        if box_features is None:
            raise ValueError("The ViLD image branch scores the pooled box features: pass them.")
        return self.embed(box_features)


# ---- building ------------------------------------------------------------------------------
def _tower_kind(visual: nn.Module) -> str:
    if is_open_clip_resnet(visual):
        return "resnet"
    if is_open_clip_vit(visual):
        return "vit"
    return type(visual).__name__


def find_clip_tower(module: nn.Module) -> Optional[nn.Module]:
    """The ovdet CLIP backbone trunk (:class:`CLIPResNet` / :class:`CLIPViT`) inside a backbone,
    or None."""
    for m in module.modules():
        if isinstance(m, (CLIPResNet, CLIPViT)):
            return m
    return None


def _crop_args(cfg) -> dict:
    """roi_align arguments of ``CROP_CONVENTION``: {} (each scorer's official crop) or
    Detectron2's aligned sampling."""
    sc = cfg.MODEL.OVD.VLM_SCORER
    if sc.CROP_CONVENTION not in CROP_CONVENTIONS:
        raise ValueError(
            f"MODEL.OVD.VLM_SCORER.CROP_CONVENTION must be one of {list(CROP_CONVENTIONS)}, got "
            f"{sc.CROP_CONVENTION!r}."
        )
    if sc.CROP_CONVENTION == "official":
        return {}
    return {"aligned": True, "sampling_ratio": sc.POOLER_SAMPLING_RATIO}


def _window_args(cfg, scorer_cls) -> dict:
    """``window`` / ``window_stride`` of ``TOWER_WINDOW`` for a ViT scorer ({} when it is 0)."""
    sc = cfg.MODEL.OVD.VLM_SCORER
    if not sc.TOWER_WINDOW:
        return {}
    if sc.CROP_STAGE == "image":
        raise ValueError(
            f"MODEL.OVD.VLM_SCORER.TOWER_WINDOW ({sc.TOWER_WINDOW}) runs the tower on windows of "
            "the whole image; with CROP_STAGE 'image' it runs on each region's crop: set "
            "TOWER_WINDOW to 0."
        )
    if scorer_cls.tower_kind != "vit":
        raise ValueError(
            f"MODEL.OVD.VLM_SCORER.TOWER_WINDOW ({sc.TOWER_WINDOW}) runs a ViT tower on windows; "
            f"the {sc.NAME!r} scorer's tower is a CLIP {scorer_cls.tower_kind}: set it to 0."
        )
    return {"window": sc.TOWER_WINDOW, "window_stride": sc.TOWER_WINDOW_STRIDE}


def _crop_stage_args(cfg, scorer_cls) -> dict:
    """``crop_stage`` (and ``image_crop_scales`` for "image") of ``CROP_STAGE``, checked against
    the stages the scorer has ("res4" only on the attention pool's CLIP ResNet)."""
    sc = cfg.MODEL.OVD.VLM_SCORER
    if sc.CROP_STAGE not in scorer_cls.crop_stages:
        raise ValueError(
            f"MODEL.OVD.VLM_SCORER.CROP_STAGE {sc.CROP_STAGE!r} is not a stage the "
            f"{sc.NAME!r} scorer crops at; its stages: {list(scorer_cls.crop_stages)} ('res4' "
            "is a CLIP ResNet stage, for the 'attnpool' scorer)."
        )
    if sc.CROP_STAGE == "image":
        return {"crop_stage": "image", "image_crop_scales": tuple(sc.IMAGE_CROP_SCALES)}
    return {"crop_stage": sc.CROP_STAGE}


def _last_block_args(cfg, scorer_cls) -> dict:
    """``value_only_last`` of ``LAST_BLOCK`` for a ViT scorer ({} for "default")."""
    choice = cfg.MODEL.OVD.VLM_SCORER.LAST_BLOCK
    if choice not in LAST_BLOCK_CHOICES:
        raise ValueError(
            f"MODEL.OVD.VLM_SCORER.LAST_BLOCK must be one of {list(LAST_BLOCK_CHOICES)}, got "
            f"{choice!r}."
        )
    if choice == "default":
        return {}
    if scorer_cls.tower_kind != "vit":
        raise ValueError(
            f"MODEL.OVD.VLM_SCORER.LAST_BLOCK {choice!r} sets how a ViT tower runs its last "
            f"block; the {cfg.MODEL.OVD.VLM_SCORER.NAME!r} scorer's tower is a CLIP "
            f"{scorer_cls.tower_kind}: set it to 'default'."
        )
    return {"value_only_last": choice == "value_only"}


def _why_not_backbone_map(
    scorer_cls, trunk, window: int = 0, crop_stage: str = "res5", value_only_last=None
) -> str:
    """Why the frozen backbone trunk does not compute the map the scorer pools ("" if it does).
    ``value_only_last``: the scorer's last-block mode (None: its class default)."""
    if crop_stage == "image":
        return "the scorer runs the tower on each region's crop (VLM_SCORER.CROP_STAGE 'image')"
    if window:
        return f"the scorer runs the tower on {window}-px windows (VLM_SCORER.TOWER_WINDOW)"
    if value_only_last is None:
        value_only_last = getattr(scorer_cls, "value_only_last", None)
    if scorer_cls.tower_kind == "vit" and trunk.value_only_last_block != value_only_last:
        mode = {True: "value-only", False: "with attention"}
        return (
            f"the backbone runs its last block {mode[trunk.value_only_last_block]}, the scorer "
            f"needs it {mode[value_only_last]}"
        )
    return ""


def _build_tower_scorer(cfg, scorer_cls, backbone: Optional[nn.Module]):
    """Place the scorer on the right tower: the frozen backbone's (shared, reading its map), a
    frozen copy of a training backbone's, or one built from ``MODEL.OVD.CLIP``."""
    trunk = find_clip_tower(backbone) if backbone is not None else None
    if trunk is None:
        model_name, pretrained = clip_backbone_source(cfg)
        visual = build_clip_visual(model_name, pretrained)
    else:
        visual = trunk.visual
    kind = _tower_kind(visual)
    if kind != scorer_cls.tower_kind:
        raise ValueError(
            f"VLM scorer {cfg.MODEL.OVD.VLM_SCORER.NAME!r} needs a CLIP {scorer_cls.tower_kind} "
            f"tower, got a {kind} tower ({type(visual).__name__}). Use 'attnpool' for CLIP "
            "ResNets, 'dense' or 'avgpool' for CLIP ViTs (MODEL.OVD.VLM_SCORER.NAME)."
        )
    window = _window_args(cfg, scorer_cls)
    stage = _crop_stage_args(cfg, scorer_cls)
    last_block = _last_block_args(cfg, scorer_cls)
    shared, reads_map = False, False
    if trunk is None:
        how = (
            f"its own {model_name} tower (no backbone with a CLIP tower was given; "
            "META_ARCHITECTURE 'OVDetGeneralizedRCNN' shares the detector's frozen tower)"
        )
    else:
        trains = not trunk.freeze or any(p.requires_grad for p in visual.parameters())
        if cfg.MODEL.OVD.VLM_SCORER.FROZEN_COPY or trains:
            visual = copy.deepcopy(visual)
            why = "the backbone trains" if trains else "VLM_SCORER.FROZEN_COPY is set"
            how = f"a frozen copy of the backbone's tower ({why})"
        else:
            shared = True
            reason = _why_not_backbone_map(
                scorer_cls,
                trunk,
                window.get("window", 0),
                stage["crop_stage"],
                last_block.get("value_only_last"),
            )
            reads_map = not reason
            if reads_map:  # the ResNet exposes the stage cropped; the ViT has one map
                trunk.expose_tower_map(*([stage["crop_stage"]] if kind == "resnet" else []))
                how = "the frozen backbone's tower, reading its map (no second forward)"
            else:
                how = f"the frozen backbone's tower, run a second time ({reason})"
    scorer = scorer_cls(
        visual,
        pooler_resolution=cfg.MODEL.OVD.VLM_SCORER.POOLER_RESOLUTION,
        shared=shared,
        reads_backbone_map=reads_map,
        **_crop_args(cfg),
        **window,
        **stage,
        **last_block,
    )
    logger.info(
        "VLM scorer %s on %s; RoIAlign %dx%d at stride %d, aligned=%s, sampling_ratio=%d%s",
        scorer_cls.__name__,
        how,
        scorer.pooler_resolution,
        scorer.pooler_resolution,
        scorer.tower_stride,
        scorer.aligned,
        scorer.sampling_ratio,
        f"; tower on {scorer.window}-px windows every {scorer.window_stride} px" if window else "",
    )
    if stage["crop_stage"] == "res4":
        logger.info("VLM scorer: the tower's last stage (layer4) runs on each region's C4 crop")
    if stage["crop_stage"] == "image":
        logger.info(
            "VLM scorer: the tower runs on each region's pixels, cropped at %s x the box and "
            "resized to its input size",
            list(scorer.image_crop_scales),
        )
    return scorer


@VLM_SCORER_REGISTRY.register()
def attnpool(cfg, *, backbone=None, **_) -> AttnPoolRegionScorer:
    """F-VLM's scorer (:class:`AttnPoolRegionScorer`)."""
    return _build_tower_scorer(cfg, AttnPoolRegionScorer, backbone)


@VLM_SCORER_REGISTRY.register()
def dense(cfg, *, backbone=None, **_) -> DenseRegionScorer:
    """CLIPSelf / F-ViT's scorer (:class:`DenseRegionScorer`)."""
    return _build_tower_scorer(cfg, DenseRegionScorer, backbone)


@VLM_SCORER_REGISTRY.register()
def avgpool(cfg, *, backbone=None, **_) -> AvgPoolRegionScorer:
    """RO-ViT's scorer (:class:`AvgPoolRegionScorer`)."""
    return _build_tower_scorer(cfg, AvgPoolRegionScorer, backbone)


@VLM_SCORER_REGISTRY.register()
def vild_image(cfg, *, box_head=None, box_predictor=None, **_) -> ViLDImageBranchScorer:
    """ViLD-ensemble's image branch: copies of the box head and projection (own weights)."""
    if box_head is None or box_predictor is None:
        raise ValueError(
            "VLM scorer 'vild_image' is ViLD's second branch and is built by the ROI heads "
            "(MODEL.ROI_HEADS.NAME 'ViLDROIHeads')."
        )
    return ViLDImageBranchScorer(copy.deepcopy(box_head), copy.deepcopy(box_predictor.projection))


def build_vlm_scorer(
    cfg, *, backbone=None, box_head=None, box_predictor=None
) -> Optional[VLMRegionScorer]:
    """Build the scorer named by ``MODEL.OVD.VLM_SCORER.NAME`` (None when it is "").

    Args:
        cfg: a Detectron2 config with the ovdet keys.
        backbone: the detector's backbone; its frozen CLIP tower is shared (see module doc).
        box_head, box_predictor: the ROI heads' box head and predictor (for ``vild_image``).
    Raises:
        ValueError: unknown name (the known ones are listed), or a scorer that does not fit the
        tower (a ResNet scorer on a ViT or the reverse).
    """
    name = cfg.MODEL.OVD.VLM_SCORER.NAME
    if not name:
        return None
    if name not in VLM_SCORER_REGISTRY:
        known = sorted(n for n, _ in VLM_SCORER_REGISTRY)
        raise ValueError(
            f"Unknown VLM scorer {name!r} (MODEL.OVD.VLM_SCORER.NAME); known: {known}. A scorer "
            "of your own must be registered in VLM_SCORER_REGISTRY before the model is built."
        )
    return VLM_SCORER_REGISTRY.get(name)(
        cfg, backbone=backbone, box_head=box_head, box_predictor=box_predictor
    )
