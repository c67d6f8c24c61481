"""Region zero-shot accuracy: each ground-truth box of a split, scored inside its whole image by a
VLM region scorer (the score F-VLM / F-ViT / RO-ViT fuse at test time), classified among all the
dataset's category names by the CLIP text tower. Reported per frequency group like the crop
figure (:mod:`.zero_shot_crops`): if it is far below the crop accuracy, the VLM's skill does not
reach the detector's boxes and the fused score cannot help novel classes.

:func:`region_zero_shot_accuracy` takes a scorer; :func:`method_region_zero_shot` builds the
scorer a detector config uses (``build_vlm_scorer`` with the config's tower, crop convention and
pooler resolution) and its text classifier's CLIP, as the detector does at test time.
"""

import json
import os
import sys
from collections import Counter, defaultdict
from typing import Dict, Iterator, List, Optional, Tuple

import cv2
import numpy as np
import torch

from .zero_shot_crops import group_accuracy

__all__ = [
    "answer_bias",
    "boxed_images",
    "category_names",
    "load_split",
    "method_region_zero_shot",
    "region_zero_shot_accuracy",
]


def load_split(dataset_dir: str, split: str):
    """(the split's json, its categories in ascending id order)."""
    with open(os.path.join(dataset_dir, f"{split}.json"), encoding="utf-8") as f:
        data = json.load(f)
    return data, sorted(data["categories"], key=lambda c: c["id"])


def boxed_images(
    data: Dict, dataset_dir: str, limit: Optional[int] = None
) -> Iterator[Tuple[np.ndarray, List[Dict], torch.Tensor]]:
    """(BGR uint8 image, its annotations, their (R, 4) float32 XYXY boxes) for each of the first
    ``limit`` (None: all) images of a loaded LVIS-format split ``data`` that has annotations, in
    the split's order; a missing or corrupt image file raises ``ValueError`` naming it."""
    by_image = defaultdict(list)
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    for img in data["images"][:limit]:
        anns = by_image.get(img["id"], [])
        if not anns:
            continue
        path = os.path.join(dataset_dir, img["file_name"])
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError(f"Cannot read image {path} (missing or corrupt)")
        boxes = torch.tensor(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in anns], dtype=torch.float32,
        )  # fmt: skip
        yield bgr, anns, boxes


def category_names(dataset_dir: str, split: str = "val"):
    """The split's category names in ascending id order: the text rows the accuracy expects."""
    return [c["name"] for c in load_split(dataset_dir, split)[1]]


@torch.no_grad()
def region_zero_shot_accuracy(
    dataset_dir: str,
    text_embeddings: torch.Tensor,
    scorer,
    *,
    split: str = "val",
    pixel_mean=None,
    pixel_std=None,
    scale: float = 1.0,
    test_size: Optional[Tuple[int, int]] = None,
    size_divisibility: int = 8,
) -> Dict[str, object]:
    """Accuracy (%) per frequency group, as :func:`group_accuracy` returns it, of the scorer's
    embeddings of every ground-truth box of ``<dataset_dir>/<split>.json``, plus the answer the
    scorer gives most often: ``top_name``, ``top_share`` (% of the boxes) and ``even_share``
    (100 / K). One group's figure can come from a bias toward a few of its names rather than
    from region skill: a scorer that names one rare kind for every box gets that kind's boxes
    right (see :func:`answer_bias`).

    Args:
        dataset_dir: an LVIS-format folder (``<split>.json`` with ``frequency`` per category,
            image files relative to the folder).
        text_embeddings: (K, D) L2-normalised, one row per category in ascending id order.
        scorer: a :class:`~ovdet_plugin.modeling.vlm_scorers.VLMRegionScorer`, called as
            ``scorer(images, boxes=[(R, 4) xyxy])`` on one (1, 3, H, W) image at a time.
        pixel_mean, pixel_std: RGB, 0-255 scale (the detector's ``MODEL.PIXEL_MEAN / STD``);
            default CLIP's.
        scale: a probe: each image and its boxes resized by this factor first (sides rounded to
            ``size_divisibility``; area interpolation down, bilinear up). 1.0: as they are.
        test_size: (short, long) of a detector's test resize (``INPUT.MIN_SIZE_TEST``,
            ``MAX_SIZE_TEST``): each image is first scaled as Detectron2's
            ``ResizeShortestEdge`` scales it, then by ``scale``. None: its own size.
    """
    from ..clip import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD

    data, cats = load_split(dataset_dir, split)
    if text_embeddings.shape[0] != len(cats):
        raise ValueError(
            f"{len(cats)} categories in {split}.json but {text_embeddings.shape[0]} text "
            "embeddings: encode the split's category names in ascending id order."
        )
    frequency = {c["id"]: c["frequency"] for c in cats}
    mean = torch.tensor(pixel_mean or CLIP_PIXEL_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(pixel_std or CLIP_PIXEL_STD, dtype=torch.float32).view(3, 1, 1)
    predicted, true = [], []
    for bgr, anns, boxes in boxed_images(data, dataset_dir):
        factor = scale * (_test_scale(bgr.shape[:2], test_size) if test_size else 1.0)
        if factor != 1.0:
            bgr, factors = _resize(bgr, factor, size_divisibility)
            boxes = boxes * torch.tensor(factors * 2, dtype=torch.float32)
        x = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float()
        x = ((x - mean) / std)[None]
        scores = scorer(x, boxes=[boxes]) @ text_embeddings.t()
        predicted += [cats[i]["id"] for i in scores.argmax(1).tolist()]
        true += [a["category_id"] for a in anns]
    acc = group_accuracy(predicted, true, [frequency[c] for c in true])
    acc.update(answer_bias(predicted, {c["id"]: c["name"] for c in cats}))
    return acc


def answer_bias(predicted_ids, names: Dict[int, str]) -> Dict[str, object]:
    """The most frequent answer among ``predicted_ids`` and its share of all answers, beside the
    share of a scorer that spreads its answers evenly over the K ``names``:
    ``{"top_name": str, "top_share": percent, "even_share": 100 / K}``. Empty input: ``{}``."""
    if not predicted_ids:
        return {}
    top, count = Counter(predicted_ids).most_common(1)[0]
    return {
        "top_name": names[top],
        "top_share": 100.0 * count / len(predicted_ids),
        "even_share": 100.0 / len(names),
    }


def _test_scale(hw, test_size: Tuple[int, int]) -> float:
    """The factor ``ResizeShortestEdge(short, max_size=long)`` applies to an (H, W) image (its
    own rule; a long side <= 0 means no cap)."""
    from detectron2.data.transforms import ResizeShortestEdge

    short, long_ = test_size
    new_h, _ = ResizeShortestEdge.get_output_shape(*hw, short, long_ if long_ > 0 else sys.maxsize)
    return new_h / hw[0]


def _resize(image, scale: float, divisibility: int):
    """``image`` (H, W, C) resized by ``scale``, sides rounded to ``divisibility``; returns it and
    the (x, y) factors applied."""
    h, w = image.shape[:2]
    new_w = int(round(w * scale / divisibility)) * divisibility
    new_h = int(round(h * scale / divisibility)) * divisibility
    interp = cv2.INTER_AREA if new_w < w else cv2.INTER_LINEAR
    return cv2.resize(image, (new_w, new_h), interpolation=interp), (new_w / w, new_h / h)


def method_region_zero_shot(
    cfg, dataset_dir: str, split: str = "val", scale: float = 1.0
) -> Dict[str, object]:
    """:func:`region_zero_shot_accuracy` of the region scorer a detector config fuses
    (``MODEL.OVD.VLM_SCORER``), on the tower the detector's backbone loads
    (``MODEL.OVD.BACKBONE.PRETRAINED``, else ``MODEL.OVD.CLIP.PRETRAINED``), against the text
    embeddings of ``MODEL.OVD.CLIP`` with the config's prompts, on the images resized as the
    detector's test input (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``). ``scale``: a probe
    on top of that, as in :func:`region_zero_shot_accuracy`, sides rounded to the scorer's
    tower stride.

    Raises:
        ValueError: the config names no tower scorer ("" or ViLD's ``vild_image`` branch, which
            needs a trained detector).
    """
    from ..clip import build_clip_model, get_clip_tokenizer
    from ..clip.text_embeddings import encode_vocabulary
    from ..modeling.vlm_scorers import build_vlm_scorer

    if cfg.INPUT.FORMAT != "RGB":
        raise ValueError(f"Region zero-shot reads RGB images; the config has {cfg.INPUT.FORMAT}")
    name = cfg.MODEL.OVD.VLM_SCORER.NAME
    if name in ("", "vild_image"):
        raise ValueError(
            f"MODEL.OVD.VLM_SCORER.NAME {name!r} is not a CLIP tower scorer; region zero-shot "
            "needs 'attnpool', 'dense' or 'avgpool'."
        )
    scorer = build_vlm_scorer(cfg).eval()
    names = category_names(dataset_dir, split)
    clip = build_clip_model(cfg.MODEL.OVD.CLIP.MODEL_NAME, cfg.MODEL.OVD.CLIP.PRETRAINED).eval()
    tokenizer = get_clip_tokenizer(cfg.MODEL.OVD.CLIP.MODEL_NAME)
    text = encode_vocabulary(
        clip, tokenizer, names, prompts=cfg.MODEL.OVD.TEXT.PROMPTS, show_progress=False
    )
    return region_zero_shot_accuracy(
        dataset_dir,
        text,
        scorer,
        split=split,
        pixel_mean=list(cfg.MODEL.PIXEL_MEAN),
        pixel_std=list(cfg.MODEL.PIXEL_STD),
        scale=scale,
        test_size=(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST),
        size_divisibility=scorer.tower_stride,
    )
