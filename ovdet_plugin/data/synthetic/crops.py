"""Single-object crops with labels, for zero-shot classification checks of a VLM (the first
figure of the benchmark: zero-shot crop accuracy on the rare categories)."""

import json
import os
from typing import Dict, Iterator, Optional, Sequence

import cv2

from ...clip.crops import context_crops

__all__ = ["iter_object_crops", "load_captions"]


def iter_object_crops(
    dataset_dir: str,
    split: str = "val",
    *,
    context: float = 0.1,
    min_area: int = 0,
    min_visible: float = 0.0,
    frequencies: Optional[Sequence[str]] = None,
    max_crops: Optional[int] = None,
) -> Iterator[Dict]:
    """Yield one crop per annotated object of a generated split (``val``, ``train`` or
    ``train_all``), in annotation order.

    Args:
        dataset_dir: the generated folder.
        context: the box is enlarged by this fraction of its size on every side (clipped to the
            image), as region classifiers usually see a little context
            (:func:`ovdet_plugin.clip.crops.context_crops`).
        min_area: skip objects with fewer visible pixels.
        min_visible: skip objects showing less than this fraction of their pixels (occluded or
            cut by the image border), from the annotations' ``visible_fraction``.
        frequencies: keep only these frequency groups (e.g. ``["r"]`` for the rare categories).
        max_crops: stop after this many.

    Yields:
        dicts with ``image`` (RGB uint8 crop), ``category_id``, ``name``, ``frequency``,
        ``annotation_id``, ``image_id``, ``bbox`` (XYWH in the full image) and
        ``visible_fraction``.
    """
    with open(os.path.join(dataset_dir, f"{split}.json"), encoding="utf-8") as f:
        data = json.load(f)
    cats = {c["id"]: c for c in data["categories"]}
    files = {im["id"]: im["file_name"] for im in data["images"]}
    cache_id, cache_img, n = None, None, 0
    for ann in sorted(data["annotations"], key=lambda a: (a["image_id"], a["id"])):
        cat = cats[ann["category_id"]]
        if ann["area"] < min_area or (frequencies and cat["frequency"] not in frequencies):
            continue
        if ann.get("visible_fraction", 1.0) < min_visible:
            continue
        if ann["image_id"] != cache_id:
            path = os.path.join(dataset_dir, files[ann["image_id"]])
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
            if bgr is None:
                raise FileNotFoundError(f"Could not read image {path}")
            cache_id, cache_img = ann["image_id"], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        x, y, w, h = ann["bbox"]
        yield {
            "image": context_crops(cache_img, [[x, y, x + w, y + h]], context)[0].copy(),
            "category_id": cat["id"],
            "name": cat["name"],
            "frequency": cat["frequency"],
            "annotation_id": ann["id"],
            "image_id": ann["image_id"],
            "bbox": list(ann["bbox"]),
            "visible_fraction": ann.get("visible_fraction", 1.0),
        }
        n += 1
        if max_crops is not None and n >= max_crops:
            return


def load_captions(dataset_dir: str):
    """The image-caption list of a generated folder: a list of dicts with ``file_name``
    (relative to ``dataset_dir``), ``caption``, ``captions`` (variants), ``category_ids``,
    ``category_names``."""
    with open(os.path.join(dataset_dir, "captions.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
