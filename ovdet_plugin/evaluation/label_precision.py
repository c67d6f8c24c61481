"""Label precision of the detections a picture would draw: of the detections kept by the
demo's selection (score >= a drawing threshold, then the ``top_k`` highest of each image, as
``tools/demo.py --confidence-threshold T --top-k K`` does), the share whose label names a
ground-truth object of the same class that the box overlaps with IoU >= 0.5.

AP says how well a detector ranks; this figure says whether a person looking at its pictures sees
correct names. It reads the files the stock evaluators already write (``LVISEvaluator`` /
``COCOEvaluator`` with an output dir: ``inference/<dataset>/lvis_instances_results.json`` or
``coco_instances_results.json``) and the dataset's LVIS/COCO-format json, so it works on a user's
own data as well as on the generated benchmark; it lives in the package for that reason.

Matching is not one-to-one: a drawn detection is correct when *some* ground-truth object of its
class in its image overlaps it with IoU >= ``iou_threshold`` (a second box drawn on the same
object with the same name is a correct name, not a false label). IoU is pycocotools' box IoU on
the json's XYWH boxes. Ground truth marked ``iscrowd`` is matched like any other object.
"""

import json
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

__all__ = ["drawn_detections", "label_precision", "load_json"]


def load_json(path_or_obj: Union[str, Mapping, Sequence]):
    """A json file's contents (an already-loaded object is returned as it is)."""
    if isinstance(path_or_obj, str):
        with open(path_or_obj, encoding="utf-8") as f:
            return json.load(f)
    return path_or_obj


def drawn_detections(
    detections: Iterable[Mapping], score_threshold: float, top_k: int = 0
) -> List[Mapping]:
    """The detections ``tools/demo.py`` would draw: per image, score >= ``score_threshold``, then
    the ``top_k`` highest scores (0: all). Order: by image, highest score first."""
    by_image: Dict[int, List[Mapping]] = {}
    for d in detections:
        if d["score"] >= score_threshold:
            by_image.setdefault(d["image_id"], []).append(d)
    drawn: List[Mapping] = []
    for image_id in sorted(by_image):
        # a stable sort on -score, as the demo's argsort(descending=True) on the kept instances
        kept = sorted(by_image[image_id], key=lambda d: -d["score"])
        drawn += kept[:top_k] if top_k > 0 else kept
    return drawn


def label_precision(
    detections: Union[str, Sequence[Mapping]],
    ground_truth: Union[str, Mapping],
    score_threshold: float,
    top_k: int = 0,
    iou_threshold: float = 0.5,
    image_ids: Optional[Iterable[int]] = None,
) -> Dict:
    """Label precision of the drawn detections (see the module docstring).

    Args:
        detections: COCO results (``image_id``, ``category_id``, ``bbox`` XYWH, ``score``), or the
            path of an evaluator's ``*_instances_results.json``.
        ground_truth: the dataset's LVIS/COCO json (or its path): ``images``, ``annotations``,
            ``categories`` (an LVIS ``frequency`` "r" marks a rare class).
        score_threshold, top_k: the drawing selection (``tools/demo.py`` arguments).
        iou_threshold: the overlap a correct label needs (>=).
        image_ids: restrict to these images (e.g. the pictured ones); default every image of
            ``ground_truth``.

    Returns:
        ``{"precision", "n", "correct", "rare_precision", "n_rare", "rare_correct",
        "rare_correct_images", "images", "score_threshold", "top_k", "iou_threshold"}``:
        precision in percent (None when nothing is drawn), "rare" over the drawn detections whose
        label is a rare class; ``rare_correct_images``: ids of the images with at least one
        correctly named rare detection.
    """
    from pycocotools import mask as mask_util

    gt = load_json(ground_truth)
    dets = load_json(detections)
    images = {img["id"] for img in gt["images"]}
    if image_ids is not None:
        images &= set(image_ids)
    rare = {c["id"] for c in gt["categories"] if c.get("frequency") == "r"}
    boxes: Dict[tuple, List[List[float]]] = {}
    for a in gt["annotations"]:
        if a["image_id"] in images:
            boxes.setdefault((a["image_id"], a["category_id"]), []).append(a["bbox"])
    drawn = drawn_detections((d for d in dets if d["image_id"] in images), score_threshold, top_k)
    correct = rare_n = rare_correct = 0
    rare_images = set()
    for d in drawn:
        same = boxes.get((d["image_id"], d["category_id"]))
        hit = False
        if same:
            iou = mask_util.iou(
                np.asarray([d["bbox"]], dtype=np.float64),
                np.asarray(same, dtype=np.float64),
                [0] * len(same),
            )
            hit = bool(np.max(iou) >= iou_threshold)
        correct += hit
        if d["category_id"] in rare:
            rare_n += 1
            rare_correct += hit
            if hit:
                rare_images.add(d["image_id"])

    def pct(k: int, n: int) -> Optional[float]:
        return 100.0 * k / n if n else None

    return {
        "precision": pct(correct, len(drawn)),
        "n": len(drawn),
        "correct": correct,
        "rare_precision": pct(rare_correct, rare_n),
        "n_rare": rare_n,
        "rare_correct": rare_correct,
        "rare_correct_images": sorted(rare_images),
        "images": len(images),
        "score_threshold": float(score_threshold),
        "top_k": int(top_k),
        "iou_threshold": float(iou_threshold),
    }
