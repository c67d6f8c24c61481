"""Box crops of an image encoded by CLIP: enlarge the boxes, crop, normalise, encode. The one
home of this pipeline, used by ViLD's teacher embeddings (``tools/precompute_vild_embeddings.py``,
methods §1.4-1.5) and CLIPSelf's teacher (methods §3.3-3.4).

Two crop styles, because the papers differ:

- :func:`roi_align_crops` (ViLD): each box resampled to ``size`` x ``size`` by an aligned
  RoIAlign (2 samples per bin), so the aspect ratio is not kept;
- :func:`padded_crops` (CLIPSelf, open_clip ``ResizeMaxSize``): the pixels inside the box's
  integer edges, long side resized to ``size`` (bicubic, antialiased), centred zero padding.

Images are float RGB in [0, 1] with shape (3, H, W); boxes are (M, 4) XYXY in pixels; crops keep
the order of the boxes. :func:`encode_crops` normalises crops with CLIP's mean/std and returns
L2-normalised embeddings.
"""

from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .constants import CLIP_MEAN, CLIP_STD
from .loading import clip_image_size

__all__ = [
    "crop_embeddings",
    "crop_pixels",
    "encode_crops",
    "enlarge_boxes",
    "normalize_for_clip",
    "padded_crops",
    "pixel_boxes",
    "resize_max_size",
    "roi_align_crops",
]


def enlarge_boxes(boxes: torch.Tensor, scale: float, *, width: int, height: int) -> torch.Tensor:
    """(M, 4) XYXY boxes enlarged ``scale`` times about their centres, clipped to the
    ``width`` x ``height`` image (keyword-only: the two sizes are easy to swap). Float output."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * scale / 2
    out = torch.cat([centre - half, centre + half], dim=1)
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def pixel_boxes(boxes: torch.Tensor, *, width: int, height: int) -> torch.Tensor:
    """(M, 4) XYXY boxes rounded outwards to integer edges inside the image, at least one pixel
    wide and high (float tensor with integer values)."""
    x0 = boxes[:, 0].floor().clamp(0, width - 1)
    y0 = boxes[:, 1].floor().clamp(0, height - 1)
    x1 = torch.maximum(boxes[:, 2].ceil().clamp(max=width), x0 + 1)
    y1 = torch.maximum(boxes[:, 3].ceil().clamp(max=height), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def crop_pixels(image: torch.Tensor, boxes: torch.Tensor) -> List[torch.Tensor]:
    """Pixel crops ``image[:, y0:y1, x0:x1]`` of integer-valued (M, 4) boxes (views)."""
    return [image[:, int(y0) : int(y1), int(x0) : int(x1)] for x0, y0, x1, y1 in boxes.tolist()]


def resize_max_size(crop: torch.Tensor, size: int) -> torch.Tensor:
    """open_clip ``ResizeMaxSize``: long side to ``size`` (bicubic, antialiased), centred zero pad
    to ``size`` x ``size`` (methods §3.3). Input/output in [0, 1] pixel units, (3, h, w)."""
    h, w = crop.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = F.interpolate(crop[None].float(), size=(nh, nw), mode="bicubic", antialias=True)
    out = out[0].clamp(0, 1)
    pad_h, pad_w = size - nh, size - nw
    return F.pad(out, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


def padded_crops(
    image: torch.Tensor, boxes: torch.Tensor, size: int, scale: float = 1.0
) -> torch.Tensor:
    """CLIPSelf's crops: (M, 3, size, size) in [0, 1] of the boxes enlarged ``scale`` times,
    rounded outwards to pixels (:func:`pixel_boxes`), then :func:`resize_max_size`.

    ``scale`` 1 leaves the boxes as they are before the rounding.
    """
    h, w = image.shape[-2:]
    if len(boxes) == 0:
        return image.new_zeros(0, 3, size, size)
    if scale != 1.0:
        boxes = enlarge_boxes(boxes, scale, width=w, height=h)
    crops = crop_pixels(image, pixel_boxes(boxes, width=w, height=h))
    return torch.stack([resize_max_size(c, size) for c in crops])


def roi_align_crops(
    image: torch.Tensor, boxes: torch.Tensor, size: int, scale: float = 1.0
) -> torch.Tensor:
    """ViLD's crops: (M, 3, size, size) in [0, 1], each box enlarged ``scale`` times
    (:func:`enlarge_boxes`, applied for every scale, 1 included) and resampled by an aligned
    RoIAlign with 2 samples per bin."""
    h, w = image.shape[-2:]
    rois = enlarge_boxes(boxes, scale, width=w, height=h)
    index = torch.zeros(len(rois), 1, dtype=rois.dtype, device=rois.device)
    return roi_align(image[None], torch.cat([index, rois], 1), size, 1.0, 2, True)


def normalize_for_clip(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) [0, 1] RGB -> CLIP-normalised (mean/std of :mod:`.constants`)."""
    mean = x.new_tensor(CLIP_MEAN).view(-1, 1, 1)
    std = x.new_tensor(CLIP_STD).view(-1, 1, 1)
    return (x - mean) / std


def encode_crops(
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    crops: torch.Tensor,
    batch_size: Optional[int] = None,
) -> torch.Tensor:
    """L2-normalised float embeddings (M, D) of (M, 3, S, S) [0, 1] crops: CLIP normalisation,
    then ``encode_image`` (e.g. ``clip_model.encode_image`` or a dense teacher), ``batch_size``
    crops at a time (None: all at once)."""
    step = batch_size or max(1, len(crops))
    parts = [
        F.normalize(encode_image(normalize_for_clip(crops[i : i + step])).float(), dim=-1)
        for i in range(0, len(crops), step)
    ]
    return torch.cat(parts) if parts else crops.new_zeros(0, 0)


@torch.no_grad()
def crop_embeddings(
    clip_model, image: torch.Tensor, boxes: torch.Tensor, scales: Sequence[float], batch_size=64
) -> torch.Tensor:
    """ViLD's teacher embeddings of box crops (methods §1.4-1.5).

    Args:
        clip_model: an open_clip model (its ``encode_image`` and input size are used).
        image: (3, H, W) float RGB in [0, 1]; boxes: (M, 4) XYXY pixels.
        scales: crop scales averaged (ViLD: 1.0 and 1.5).
        batch_size: crops per forward pass.
    Returns:
        (M, D) L2-normalised: per scale, :func:`roi_align_crops` -> :func:`encode_crops`; then
        the sum over scales, renormalised (ViLD's 1x + 1.5x ensemble).
    """
    size = clip_image_size(clip_model)
    total = 0
    for scale in scales:
        parts = []
        for start in range(0, len(boxes), batch_size):
            crops = roi_align_crops(image, boxes[start : start + batch_size], size, scale)
            parts.append(encode_crops(clip_model.encode_image, crops))
        total = total + torch.cat(parts)
    return F.normalize(total, dim=1)
