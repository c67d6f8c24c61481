"""RO-ViT cropped positional embedding (CPE), methods §4.1.

During image-text pretraining the patch positional embedding is (1) bilinearly upsampled to a
detection-sized grid (64x64 by default), (2) a random box with RandomResizedCrop statistics is
cropped out of it per image and (3) resized back to the patch grid, as if the pretraining image
were a crop of a larger detection image. No parameter is added; the class-token entry is
unchanged. CPE is a training-only augmentation: in eval mode the plain (interpolated) embedding
is used.

Everything here is a pure function of tensors except :class:`CroppedPosEmbed`, a parameter-free
module holding the CPE settings.
"""

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

__all__ = [
    "CroppedPosEmbed",
    "crop_and_resize_pos_embed",
    "cropped_positional_embedding",
    "sample_crop_boxes",
    "upsample_pos_embed",
]


def upsample_pos_embed(patch_pos: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample a patch positional embedding grid (RO-ViT step 1, methods §4.1).

    Args:
        patch_pos: (gh, gw, C) embedding without the class token.
        size: (H, W) target grid (``up_pos_emb_size``, 64x64 by default).
    Returns:
        (C, H, W) channels-first grid (the layout RoIAlign reads). ``align_corners=False``; at
        the same size the input is returned unchanged (up to the permute).
    """
    grid = patch_pos.permute(2, 0, 1).unsqueeze(0)  # (1, C, gh, gw)
    if tuple(grid.shape[-2:]) != tuple(size):
        # bilinear upsampling of the pretraining embedding (fvlm/rovit cropped_positional_embedding)
        grid = F.interpolate(grid.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return grid[0].to(patch_pos.dtype)


def sample_crop_boxes(
    num: int,
    *,
    scale: Sequence[float] = (0.1, 1.0),
    ratio: Sequence[float] = (0.5, 2.0),
    generator: Optional[torch.Generator] = None,
    max_tries: int = 10,
) -> torch.Tensor:
    """Random boxes with RandomResizedCrop statistics (RO-ViT step 2, methods §4.1).

    Area fraction ``s ~ U(scale)``, log aspect ratio (w/h) ``~ U(log ratio)``; width
    ``sqrt(s r)``, height ``sqrt(s / r)`` in units of the (square) grid; a draw that does not fit
    is redrawn up to ``max_tries`` times, then clipped to the grid (torchvision's fallback is the
    whole image with the ratio clamped, which for a square grid is the full box). The position is
    uniform among the positions where the box fits.

    Args:
        num: number of boxes (one per image).
        scale: (min, max) fraction of the grid area.
        ratio: (min, max) width / height.
        generator: torch RNG (the global one when None).
    Returns:
        (num, 4) boxes ``(x0, y0, x1, y1)`` normalised to [0, 1].
    """
    if num == 0:
        return torch.zeros(0, 4)
    lo, hi = float(scale[0]), float(scale[1])
    if not (0 < lo <= hi <= 1):
        raise ValueError(f"CPE crop scale must satisfy 0 < min <= max <= 1, got {scale}.")
    if not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"CPE crop aspect range must satisfy 0 < min <= max, got {ratio}.")
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    w = torch.ones(num)
    h = torch.ones(num)
    todo = torch.ones(num, dtype=torch.bool)
    for _ in range(max_tries):
        n = int(todo.sum())
        if n == 0:
            break
        s = torch.empty(n).uniform_(lo, hi, generator=generator)
        r = torch.exp(torch.empty(n).uniform_(log_r[0], log_r[1], generator=generator))
        cw, ch = torch.sqrt(s * r), torch.sqrt(s / r)
        ok = (cw <= 1) & (ch <= 1)
        idx = todo.nonzero().flatten()
        w[idx[ok]] = cw[ok]
        h[idx[ok]] = ch[ok]
        todo[idx[ok]] = False
    # fallback for draws that never fitted: the full grid (square grid, see docstring)
    x0 = torch.rand(num, generator=generator) * (1 - w)
    y0 = torch.rand(num, generator=generator) * (1 - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def crop_and_resize_pos_embed(
    up_pos: torch.Tensor, boxes: torch.Tensor, out_size: Tuple[int, int], aligned: bool = False
) -> torch.Tensor:
    """Crop each box out of the upsampled grid and resize it to ``out_size`` (RO-ViT step 3).

    RoIAlign with one bilinear sample per output cell (the bin centre). ``aligned=False`` is the
    official crop (fvlm ``multilevel_crop_and_resize``: no half-pixel shift; torchvision also
    takes boxes of at least one cell); ``aligned=True`` shifts by half a cell, so that the full
    box at the same size is the identity.

    Args:
        up_pos: (C, H, W) upsampled embedding.
        boxes: (B, 4) normalised ``(x0, y0, x1, y1)``.
        out_size: (h, w) patch grid.
        aligned: the half-pixel convention (see above).
    Returns:
        (B, h * w, C) row-major patch embeddings, one set per box.
    """
    C, H, W = up_pos.shape
    scale = boxes.new_tensor([W, H, W, H])
    # every box reads the same (single) map: batch index 0
    rois = torch.cat([boxes.new_zeros(len(boxes), 1), boxes * scale], dim=1)
    rois = rois.to(up_pos.device, torch.float32)
    crops = roi_align(
        up_pos.unsqueeze(0).float(),
        rois,
        output_size=tuple(out_size),
        spatial_scale=1.0,
        sampling_ratio=1,
        aligned=aligned,
    )  # (B, C, h, w)
    return crops.flatten(2).transpose(1, 2).to(up_pos.dtype)


def _upsample_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) 1-D weights of bilinear resampling with ``align_corners=False`` (PyTorch's
    rule: source ``(i + 0.5) n_in / n_out - 0.5``, clamped at 0; upper neighbour capped)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * n_in / n_out - 0.5).clamp(min=0)
    low = src.floor().long().clamp(max=n_in - 1)
    high = (low + 1).clamp(max=n_in - 1)
    frac = src - low
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    m.index_put_((rows, low), 1 - frac, accumulate=True)
    m.index_put_((rows, high), frac, accumulate=True)
    return m


def _roi_sample_matrix(
    start: torch.Tensor, end: torch.Tensor, n_in: int, n_out: int, aligned: bool = False
):
    """(B, n_out, n_in) 1-D weights of RoIAlign with one sample per bin on a length-n_in axis, for
    boxes [start, end) in pixels (torchvision's rules: ``aligned`` shifts by half a pixel,
    otherwise boxes are at least one pixel long; a sample below -1 or above n_in reads 0, below
    0 reads pixel 0, at or beyond the last pixel reads it)."""
    if aligned:
        start, length = start - 0.5, end - start
    else:
        length = (end - start).clamp(min=1.0)
    bin_size = length / n_out  # (B,)
    y = start[:, None] + (torch.arange(n_out, dtype=start.dtype) + 0.5) * bin_size[:, None]
    valid = (y >= -1.0) & (y <= n_in)
    y = y.clamp(min=0)
    low = y.floor().long()
    at_end = low >= n_in - 1
    low = torch.where(at_end, torch.full_like(low, n_in - 1), low)
    high = torch.where(at_end, low, low + 1)
    frac = torch.where(at_end, torch.zeros_like(y), y - low)
    B = start.shape[0]
    m = torch.zeros(B, n_out, n_in, dtype=start.dtype)
    b = torch.arange(B)[:, None].expand(B, n_out)
    r = torch.arange(n_out)[None].expand(B, n_out)
    m.index_put_((b, r, low), (1 - frac) * valid, accumulate=True)
    m.index_put_((b, r, high), frac * valid, accumulate=True)
    return m


def cropped_positional_embedding(
    patch_pos: torch.Tensor,
    boxes: torch.Tensor,
    *,
    up_size: Tuple[int, int],
    out_size: Tuple[int, int],
    aligned: bool = False,
) -> torch.Tensor:
    """Upsample, crop per box and resize back (methods §4.1, the whole recipe).

    Computes exactly :func:`upsample_pos_embed` followed by :func:`crop_and_resize_pos_embed`,
    but as two small matrix products per box: both steps are bilinear, hence separable and
    linear, so the composition is ``A_y(box) @ P @ A_x(box)^T`` per channel with
    ``A = roi_sample_matrix(box) @ upsample_matrix``. This avoids materialising and
    back-propagating through the 64x64 upsampled grid (RoIAlign's CPU backward is a scatter).

    Args:
        patch_pos: (gh, gw, C) patch embedding of the pretraining grid (no class token).
        boxes: (B, 4) normalised crop boxes (see :func:`sample_crop_boxes`).
        up_size: ``up_pos_emb_size`` (64, 64).
        out_size: the patch grid of the current input (h, w).
        aligned: the crop's half-pixel convention (:func:`crop_and_resize_pos_embed`).
    Returns:
        (B, h * w, C).
    """
    gh, gw, C = patch_pos.shape
    H, W = int(up_size[0]), int(up_size[1])
    h, w = int(out_size[0]), int(out_size[1])
    b = boxes.detach().to("cpu", torch.float64)
    # A_y: (B, h, gh) = RoIAlign rows on the upsampled axis @ bilinear upsampling (methods §4.1)
    a_y = _roi_sample_matrix(b[:, 1] * H, b[:, 3] * H, H, h, aligned) @ _upsample_matrix(gh, H)
    a_x = _roi_sample_matrix(b[:, 0] * W, b[:, 2] * W, W, w, aligned) @ _upsample_matrix(gw, W)
    a_y = a_y.to(patch_pos.device, patch_pos.dtype)
    a_x = a_x.to(patch_pos.device, patch_pos.dtype)
    B = boxes.shape[0]
    rows = (a_y.reshape(B * h, gh) @ patch_pos.reshape(gh, gw * C)).reshape(B, h, gw, C)
    out = torch.matmul(a_x.unsqueeze(1), rows)  # (B, 1, w, gw) @ (B, h, gw, C) -> (B, h, w, C)
    return out.reshape(B, h * w, C)


class CroppedPosEmbed(nn.Module):
    """CPE settings as a (parameter-free) module; call it with the tower's positional embedding.

    ``forward(pos_embed, native_grid, grid, batch)`` returns per-image (B, 1 + h*w, C)
    embeddings: the class-token entry unchanged, the patch entries cropped from the upsampled
    grid. Only the caller decides when to use it (training only, see ``RegionAwareCLIP``).
    """

    def __init__(
        self,
        up_size: int = 64,
        scale: Sequence[float] = (0.1, 1.0),
        ratio: Sequence[float] = (0.5, 2.0),
        aligned: bool = False,
    ):
        """``aligned``: False = the official crop (no half-pixel shift), see
        :func:`crop_and_resize_pos_embed`."""
        super().__init__()
        self.up_size = (int(up_size), int(up_size))
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.aligned = bool(aligned)

    def forward(
        self,
        pos_embed: torch.Tensor,
        native_grid: Tuple[int, int],
        grid: Tuple[int, int],
        batch: int,
        boxes: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """
        Args:
            pos_embed: (1 + gh*gw, C) tower embedding (class token first).
            native_grid: (gh, gw).
            grid: (h, w) of the current input.
            batch: B.
            boxes: (B, 4) normalised crop boxes; sampled when None.
        Returns:
            (B, 1 + h*w, C).
        """
        gh, gw = native_grid
        if boxes is None:
            boxes = sample_crop_boxes(
                batch, scale=self.scale, ratio=self.ratio, generator=generator
            )
        patch = pos_embed[1:].reshape(gh, gw, -1)
        crops = cropped_positional_embedding(
            patch, boxes, up_size=self.up_size, out_size=grid, aligned=self.aligned
        )
        cls = pos_embed[:1].unsqueeze(0).expand(batch, -1, -1)
        return torch.cat([cls, crops.to(pos_embed.dtype)], dim=1)

    def extra_repr(self) -> str:
        return (
            f"up_size={self.up_size}, scale={self.scale}, ratio={self.ratio}, "
            f"aligned={self.aligned}"
        )
