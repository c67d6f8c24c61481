"""Zero-shot classification of ground-truth object crops with a CLIP model: how well a VLM
names the objects of a dataset before any detector is trained. It runs on any registered
Detectron2 dataset (:func:`load_dataset_crops`: your own COCO- or LVIS-format data), grouped by
LVIS frequency or, without one, by novel/base, and on a generated dataset's folder
(:func:`load_crops`; the first figure of the generated-data benchmark, ``benchmarks/synthetic``).

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

from ..clip.constants import CLIP_MEAN, CLIP_STD
from ..clip.text_embeddings import encode_vocabulary
from ..data.synthetic.crops import iter_object_crops

# The LVIS frequency groups: rare, common, frequent.
FREQUENCY_GROUPS = ("r", "c", "f")

__all__ = [
    "square_resize",
    "load_crops",
    "load_dataset_crops",
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


def _crop_box(image: np.ndarray, xyxy: Sequence[float], context: float) -> np.ndarray:
    """The box enlarged by ``context`` of its size on every side, clipped to the image."""
    x0, y0, x1, y1 = xyxy
    dx, dy = (x1 - x0) * context, (y1 - y0) * context
    h, w = image.shape[:2]
    x0, y0 = int(max(0, np.floor(x0 - dx))), int(max(0, np.floor(y0 - dy)))
    x1, y1 = int(min(w, np.ceil(x1 + dx))), int(min(h, np.ceil(y1 + dy)))
    return image[y0:y1, x0:x1]


def load_dataset_crops(
    dataset_name: str,
    size: int,
    *,
    context: float = 0.1,
    min_size: float = 4.0,
    max_crops: Optional[int] = None,
) -> Dict:
    """Every annotated box of a registered dataset as a CLIP-normalised crop, in the layout of
    :func:`load_crops` (so :func:`zero_shot_accuracy` takes it).

    Args:
        dataset_name: any name in Detectron2's ``DatasetCatalog`` whose metadata has
            ``thing_classes`` (every registration of this plugin has).
        size: the CLIP input size (:func:`~ovdet_plugin.clip.clip_image_size`).
        context: each box is enlarged by this fraction of its size on every side.
        min_size: skip boxes whose shorter side is below this many pixels.
        max_crops: stop after this many.

    Returns:
        ``images`` (N, 3, size, size), ``category_ids`` (contiguous ids), ``frequencies`` (the
        group of each crop: LVIS frequency "r"/"c"/"f" when the metadata has them, else
        "novel"/"base"), ``categories`` ([{"id": contiguous id, "name"}]) and ``groups``.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.detection_utils import read_image
    from detectron2.structures import BoxMode

    dicts = DatasetCatalog.get(dataset_name)
    meta = MetadataCatalog.get(dataset_name)
    names = list(meta.thing_classes)
    freq = list(meta.get("thing_class_frequency") or [""] * len(names))
    splits = list(meta.get("thing_class_splits") or [""] * len(names))
    by_frequency = all(f in ("r", "c", "f") for f in freq)
    groups = ("r", "c", "f") if by_frequency else ("novel", "base")
    label = freq if by_frequency else splits
    images, cat_ids, kinds = [], [], []
    for record in dicts:
        anns = [a for a in record.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        image = read_image(record["file_name"], format="RGB")
        for ann in anns:
            xyxy = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            if min(xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]) < min_size:
                continue
            images.append(square_resize(_crop_box(image, xyxy, context), size))
            cat_ids.append(ann["category_id"])
            kinds.append(label[ann["category_id"]])
            if max_crops is not None and len(images) >= max_crops:
                break
        if max_crops is not None and len(images) >= max_crops:
            break
    if not images:
        raise ValueError(
            f"Dataset {dataset_name!r} has no annotated box of at least {min_size} px to crop; "
            "zero-shot crop accuracy needs ground-truth boxes (use a validation split)."
        )
    return {
        "images": to_clip_tensor(np.stack(images)),
        "category_ids": cat_ids,
        "frequencies": kinds,
        "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
        "groups": groups,
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
    return group_accuracy(
        [id_of[p] for p in pred],
        crops["category_ids"],
        crops["frequencies"],
        groups=crops.get("groups", FREQUENCY_GROUPS),
    )


def group_accuracy(
    predicted_ids: Sequence[int],
    true_ids: Sequence[int],
    frequencies: Sequence[str],
    groups: Sequence[str] = FREQUENCY_GROUPS,
) -> Dict[str, float]:
    """Top-1 accuracy (percent) per group: keys "r", "c", "f" (or the given ``groups``, e.g.
    "novel", "base"), "all" (NaN for an empty group) and "n_r", "n_c", "n_f", ..., "n_all"
    (counts). One category id and group per object."""
    hits, counts = defaultdict(int), defaultdict(int)
    for p, gt, fr in zip(predicted_ids, true_ids, frequencies):
        for group in (fr, "all"):
            counts[group] += 1
            hits[group] += int(p == gt)
    out: Dict[str, float] = {}
    for group in (*groups, "all"):
        out[group] = 100.0 * hits[group] / counts[group] if counts[group] else float("nan")
        out["n_" + group] = counts[group]
    return out


def format_accuracy(acc: Dict[str, float]) -> str:
    """One line: the groups of :func:`group_accuracy` present in ``acc``, then all."""
    labels = {"r": "rare", "c": "common", "f": "frequent"}
    keys = [k[2:] for k in acc if k.startswith("n_") and k != "n_all"] + ["all"]
    return "  ".join(f"{labels.get(k, k)} {acc[k]:.1f}% (n={acc['n_' + k]})" for k in keys)
