"""Zero-shot classification of the single-object crops of a generated dataset with a CLIP model:
the first figure of the generated-data benchmark (``tools/run_synthetic_benchmark.py``).

Crops of every annotated object of a split (val by default, from
:func:`ovdet_plugin.data.synthetic.crops.iter_object_crops`) are padded to a square, resized to
the model's input size and classified among all the dataset's category names with a text
classifier from the project's ``encode_vocabulary``. Top-1 accuracy is reported per frequency
group (r / c / f) and overall. Deterministic (the crops come in annotation order).
"""

import json
import os
from collections import defaultdict
from typing import Callable, Dict, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..clip.text_embeddings import encode_vocabulary
from ..data.synthetic.crops import iter_object_crops
from ..pretraining.caption_data import CLIP_MEAN, CLIP_STD

__all__ = [
    "square_resize",
    "load_crops",
    "zero_shot_accuracy",
    "group_accuracy",
    "format_accuracy",
]


def square_resize(crop: np.ndarray, size: int) -> np.ndarray:
    """Pad an RGB uint8 crop to a square (centred, filled with the mean colour of the crop's
    border pixels, so the padding looks like the background) and resize it to ``size``."""
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


def to_clip_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) CLIP-normalised float tensor."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def load_crops(dataset_dir: str, size: int, split: str = "val", min_visible: float = 0.0) -> Dict:
    """Every single-object crop of ``split`` as a CLIP-normalised tensor plus labels."""
    images, cat_ids, freqs = [], [], []
    for c in iter_object_crops(dataset_dir, split, min_visible=min_visible):
        images.append(square_resize(c["image"], size))
        cat_ids.append(c["category_id"])
        freqs.append(c["frequency"])
    with open(os.path.join(dataset_dir, f"{split}.json"), encoding="utf-8") as f:
        cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    return {
        "images": to_clip_tensor(np.stack(images)),
        "category_ids": cat_ids,
        "frequencies": freqs,
        "categories": cats,
    }


@torch.no_grad()
def zero_shot_accuracy(
    model,
    tokenizer,
    crops: Dict,
    *,
    prompts: str = "single",
    encode_image: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    batch_size: int = 256,
) -> Dict[str, float]:
    """Top-1 zero-shot accuracy (percent) of ``crops`` (from :func:`load_crops`) among all the
    categories: keys "r", "c", "f" (per frequency group), "all" and "n_r", "n_c", "n_f", "n_all"
    (crop counts). ``encode_image`` defaults to ``model.encode_image`` (open_clip)."""
    was_training = model.training
    model.eval()
    try:
        names = [c["name"] for c in crops["categories"]]
        text = encode_vocabulary(model, tokenizer, names, prompts=prompts, show_progress=False)
        enc = encode_image or model.encode_image
        feats = []
        for start in range(0, len(crops["images"]), batch_size):
            feats.append(
                F.normalize(enc(crops["images"][start : start + batch_size]).float(), dim=-1)
            )
        pred = (torch.cat(feats) @ text.t()).argmax(dim=1).tolist()
    finally:
        model.train(was_training)
    id_of = [c["id"] for c in crops["categories"]]
    return group_accuracy([id_of[p] for p in pred], crops["category_ids"], crops["frequencies"])


def group_accuracy(
    predicted_ids: Sequence[int], true_ids: Sequence[int], frequencies: Sequence[str]
) -> Dict[str, float]:
    """Top-1 accuracy (percent) per frequency group: keys "r", "c", "f", "all" (NaN for an empty
    group) and "n_r", "n_c", "n_f", "n_all" (counts). One category id and group per object."""
    hits, counts = defaultdict(int), defaultdict(int)
    for p, gt, fr in zip(predicted_ids, true_ids, frequencies):
        for group in (fr, "all"):
            counts[group] += 1
            hits[group] += int(p == gt)
    out: Dict[str, float] = {}
    for group in ("r", "c", "f", "all"):
        out[group] = 100.0 * hits[group] / counts[group] if counts[group] else float("nan")
        out["n_" + group] = counts[group]
    return out


def format_accuracy(acc: Dict[str, float]) -> str:
    return (
        f"rare {acc['r']:.1f}% (n={acc['n_r']})  common {acc['c']:.1f}% (n={acc['n_c']})  "
        f"frequent {acc['f']:.1f}% (n={acc['n_f']})  all {acc['all']:.1f}% (n={acc['n_all']})"
    )
