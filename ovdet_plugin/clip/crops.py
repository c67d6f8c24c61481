"""Box crops of an image encoded by CLIP: enlarge the boxes, crop, normalise, encode. The one
home of this pipeline, used by ViLD's teacher embeddings (``tools/precompute_vild_embeddings.py``,
methods §1.4-1.5), CLIPSelf's teacher (methods §3.3-3.4) and the zero-shot crop check
(:mod:`ovdet_plugin.evaluation.zero_shot_crops`, with the generated dataset's
:func:`~ovdet_plugin.data.synthetic.iter_object_crops`).

Three crop styles, because their users differ:

- :func:`roi_align_crops` (ViLD): each box resampled to ``size`` x ``size`` by an aligned
  RoIAlign (2 samples per bin), so the aspect ratio is not kept;
- :func:`padded_crops` (CLIPSelf, open_clip ``ResizeMaxSize``): the pixels inside the box's
  integer edges, long side resized to ``size`` (bicubic, antialiased), centred zero padding;
- :func:`square_crops` (the zero-shot crop check): the box plus a margin of ``context`` times
  its size on every side (:func:`context_boxes`), padded to a square with the colour of its
  border and resized with OpenCV (:func:`square_resize`).

Images are float RGB in [0, 1] with shape (3, H, W), except for the zero-shot style, which
works on the uint8 (H, W, 3) RGB arrays images are read as; boxes are (M, 4) XYXY in pixels;
crops keep the order of the boxes. :func:`encode_crops` normalises [0, 1] crops with CLIP's
mean/std and returns L2-normalised embeddings.
"""

from typing import Callable, List, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .constants import CLIP_MEAN, CLIP_STD
from .loading import clip_image_size

__all__ = [
    "context_boxes",
    "context_crops",
    "crop_embeddings",
    "crop_pixels",
    "encode_crops",
    "enlarge_boxes",
    "scale_boxes",
    "normalize_for_clip",
    "padded_crops",
    "pixel_boxes",
    "resize_max_size",
    "roi_align_crops",
    "square_crops",
    "square_resize",
    "uint8_to_unit",
]


def scale_boxes(boxes: torch.Tensor, scale: float) -> torch.Tensor:
    """(M, 4) XYXY boxes enlarged ``scale`` times about their centres, not clipped."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * scale / 2
    return torch.cat([centre - half, centre + half], dim=1)


def enlarge_boxes(boxes: torch.Tensor, scale: float, *, width: int, height: int) -> torch.Tensor:
    """(M, 4) XYXY boxes enlarged ``scale`` times about their centres (:func:`scale_boxes`),
    clipped to the ``width`` x ``height`` image (keyword-only: the two sizes are easy to swap).
    Float output."""
    out = scale_boxes(boxes, scale)
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


def context_boxes(boxes, context: float, *, width: int, height: int) -> torch.Tensor:
    """(M, 4) XYXY boxes (a tensor, array or nested list) grown by a margin of ``context`` times
    their own width / height on every side, then rounded outwards to integer edges inside the
    image (:func:`pixel_boxes`). Float64.

    The enlargement of :func:`enlarge_boxes` with scale ``1 + 2 context``, written as a margin
    (``x0 - context (x1 - x0)``): the arithmetic the zero-shot crop figures were computed with
    (the two can differ by one float rounding, hence by one pixel after the rounding outwards).
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    margin = (boxes[:, 2:] - boxes[:, :2]) * context
    grown = torch.cat([boxes[:, :2] - margin, boxes[:, 2:] + margin], dim=1)
    return pixel_boxes(grown, width=width, height=height)


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


def context_crops(image: np.ndarray, boxes, context: float) -> List[np.ndarray]:
    """Views ``image[y0:y1, x0:x1]`` of an (H, W, C) array for the boxes of
    :func:`context_boxes` (the box plus ``context`` times its size on every side)."""
    h, w = image.shape[:2]
    rounded = context_boxes(boxes, context, width=w, height=h)
    return [image[int(y0) : int(y1), int(x0) : int(x1)] for x0, y0, x1, y1 in rounded.tolist()]


def square_resize(crop: np.ndarray, size: int) -> np.ndarray:
    """Pad an RGB uint8 (h, w, 3) crop to a square (centred, filled with the mean colour of the
    crop's border pixels, so the padding looks like the background) and resize it to ``size``
    (OpenCV: area interpolation when shrinking, bilinear when enlarging)."""
    h, w = crop.shape[:2]
    side = max(h, w)
    border = np.concatenate([crop[0], crop[-1], crop[:, 0], crop[:, -1]], axis=0)
    fill = border.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[:] = fill
    y0, x0 = (side - h) // 2, (side - w) // 2
    out[y0 : y0 + h, x0 : x0 + w] = crop
    interp = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    return cv2.resize(out, (size, size), interpolation=interp)


def uint8_to_unit(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float in [0, 1] (what :func:`encode_crops`
    takes)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def square_crops(image: np.ndarray, boxes, size: int, context: float = 0.1) -> torch.Tensor:
    """The zero-shot check's crops of a uint8 (H, W, 3) RGB image: (M, 3, size, size) float in
    [0, 1], each box with a margin of ``context`` times its size (:func:`context_crops`), padded
    to a square and resized (:func:`square_resize`)."""
    crops = [square_resize(c, size) for c in context_crops(image, boxes, context)]
    if not crops:
        return torch.zeros(0, 3, size, size)
    return uint8_to_unit(np.stack(crops))


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
