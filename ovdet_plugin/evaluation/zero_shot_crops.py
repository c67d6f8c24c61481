"""Zero-shot classification of ground-truth object crops with a CLIP model: how well a VLM
names the objects of a dataset before any detector is trained. It runs on any registered
Detectron2 dataset (:func:`load_dataset_crops`: your own COCO- or LVIS-format data), grouped by
LVIS frequency or, without one, by novel/base, and on a generated dataset's folder
(:func:`load_crops`; the first figure of the generated-data benchmark, ``benchmarks/synthetic``).

Crops of every annotated object of a split (val by default, from
:func:`ovdet_plugin.data.synthetic.crops.iter_object_crops`) are padded to a square, resized to
the model's input size and classified among all the dataset's category names with a text
classifier from the project's ``encode_vocabulary``. Top-1 accuracy is reported per frequency
group (r / c / f) and overall. Deterministic (the crops come in annotation order). The crops
(box plus context, square pad, resize) and their encoding are :mod:`ovdet_plugin.clip.crops`'
zero-shot style (:func:`~ovdet_plugin.clip.crops.square_crops`,
:func:`~ovdet_plugin.clip.crops.encode_crops`).
"""

import json
import os
from collections import defaultdict
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import torch

from ..clip.crops import encode_crops, square_crops, square_resize, uint8_to_unit
from ..clip.text_embeddings import encode_vocabulary
from ..data.synthetic.crops import iter_object_crops

# The LVIS frequency groups: rare, common, frequent.
FREQUENCY_GROUPS = ("r", "c", "f")

__all__ = [
    "load_crops",
    "load_dataset_crops",
    "zero_shot_accuracy",
    "group_accuracy",
    "format_accuracy",
]


def load_crops(dataset_dir: str, size: int, split: str = "val", min_visible: float = 0.0) -> Dict:
    """Every single-object crop of ``split`` (box plus 10 % context on every side, padded to a
    square and resized to ``size``) plus labels: ``images`` (N, 3, size, size) float in [0, 1],
    ``category_ids``, ``frequencies`` and ``categories`` (the split's, sorted by id)."""
    images, cat_ids, freqs = [], [], []
    for c in iter_object_crops(dataset_dir, split, min_visible=min_visible):
        images.append(square_resize(c["image"], size))
        cat_ids.append(c["category_id"])
        freqs.append(c["frequency"])
    with open(os.path.join(dataset_dir, f"{split}.json"), encoding="utf-8") as f:
        cats = sorted(json.load(f)["categories"], key=lambda c: c["id"])
    return {
        "images": uint8_to_unit(np.stack(images)),
        "category_ids": cat_ids,
        "frequencies": freqs,
        "categories": cats,
    }


def load_dataset_crops(
    dataset_name: str,
    size: int,
    *,
    context: float = 0.1,
    min_size: float = 4.0,
    max_crops: Optional[int] = None,
) -> Dict:
    """Every annotated box of a registered dataset as a crop
    (:func:`~ovdet_plugin.clip.crops.square_crops`), in the layout of :func:`load_crops` (so
    :func:`zero_shot_accuracy` takes it).

    Args:
        dataset_name: any name in Detectron2's ``DatasetCatalog`` whose metadata has
            ``thing_classes`` (every registration of this plugin has).
        size: the CLIP input size (:func:`~ovdet_plugin.clip.clip_image_size`).
        context: each box is enlarged by this fraction of its size on every side.
        min_size: skip boxes whose shorter side is below this many pixels.
        max_crops: stop after this many.

    Returns:
        ``images`` (N, 3, size, size) float in [0, 1], ``category_ids`` (contiguous ids),
        ``frequencies`` (the group of each crop: LVIS frequency "r"/"c"/"f" when the metadata has
        them, else "novel"/"base"), ``categories`` ([{"id": contiguous id, "name"}]) and ``groups``.
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
        boxes = []
        for ann in anns:
            if max_crops is not None and len(cat_ids) >= max_crops:
                break
            xyxy = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
            if min(xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]) < min_size:
                continue
            boxes.append(xyxy)
            cat_ids.append(ann["category_id"])
            kinds.append(label[ann["category_id"]])
        if boxes:
            image = read_image(record["file_name"], format="RGB")
            images.append(square_crops(image, boxes, size, context))
        if max_crops is not None and len(cat_ids) >= max_crops:
            break
    if not images:
        raise ValueError(
            f"Dataset {dataset_name!r} has no annotated box of at least {min_size} px to crop; "
            "zero-shot crop accuracy needs ground-truth boxes (use a validation split)."
        )
    return {
        "images": torch.cat(images),
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
    (crop counts). ``encode_image`` defaults to ``model.encode_image`` (open_clip); it gets
    CLIP-normalised crops (:func:`~ovdet_plugin.clip.crops.encode_crops`)."""
    was_training = model.training
    model.eval()
    try:
        names = [c["name"] for c in crops["categories"]]
        text = encode_vocabulary(model, tokenizer, names, prompts=prompts, show_progress=False)
        feats = encode_crops(encode_image or model.encode_image, crops["images"], batch_size)
        pred = (feats @ text.t()).argmax(dim=1).tolist()
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
