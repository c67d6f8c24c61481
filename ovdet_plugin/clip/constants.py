"""CLIP's image normalisation, the one definition every part of the plugin uses."""

from typing import Tuple

from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

__all__ = ["CLIP_MEAN", "CLIP_PIXEL_MEAN", "CLIP_PIXEL_STD", "CLIP_STD"]

# RGB mean / std of CLIP's training images for [0, 1] pixels, as open_clip defines them.
CLIP_MEAN: Tuple[float, float, float] = OPENAI_DATASET_MEAN
CLIP_STD: Tuple[float, float, float] = OPENAI_DATASET_STD

# The same times 255, because Detectron2 feeds 0-255 pixels: MODEL.PIXEL_MEAN / PIXEL_STD with
# INPUT.FORMAT "RGB" (configs/Base-CLIP-*.yaml write these values).
CLIP_PIXEL_MEAN: Tuple[float, float, float] = tuple(255.0 * m for m in OPENAI_DATASET_MEAN)
CLIP_PIXEL_STD: Tuple[float, float, float] = tuple(255.0 * s for s in OPENAI_DATASET_STD)
