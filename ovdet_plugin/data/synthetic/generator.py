"""Generate the synthetic open-vocabulary dataset (the embedded default of the plugin).

Output folder (``out_dir``)::

    meta.json          generator config, categories (planned tier, frequency, counts), timing
    train.json         LVIS format, detection training: rare (novel) annotations removed
    train_all.json     LVIS format, the same images with every annotation (oracle / reference)
    val.json           LVIS format, every category annotated, exhaustive negatives
    captions.jsonl     image-caption pairs for VLM pretraining (the "pretrain" images)
    images/{train,val,pretrain}/000001.png

Frequency rule (LVIS's r/c/f by training-image count, scaled to the dataset size): with ``N``
training images and thresholds ``(a, b) = frequency_thresholds`` (default 0.02, 0.10),
``t_r = max(1, round(a*N))`` and ``t_c = max(t_r + 1, round(b*N))``; a category in
``1..t_r`` training images is "r", in ``t_r+1..t_c`` "c", above ``t_c`` "f". LVIS itself uses
10 and 100 images (Gupta et al. 2019). The planned tiers of :data:`shapes.OBJECT_KINDS` are
scheduled to land in these ranges and the written frequency is recomputed from the counts.

Caption images (``pretrain_style``): "objects" draws small images of 1..``pretrain_max_objects``
objects with varied captions (colours, counts, positions); "scene_crops" draws detection-like
scenes (``image_size``, ``size_range``, ``min_objects..max_objects``) and cuts one caption image
around each object, with random context (``pretrain_context``) and a jittered box
(``pretrain_jitter``), padded to a square and resized to ``pretrain_image_size``, captioned
"a photo of a <name>." (RO-ViT's point, methods §4.1: pretrain on regions of whole scenes, with
their neighbours and occluders, as the detector will see them). Only the caption names the
object: no box of the pretraining scenes is written.

Rare categories appear, unannotated, in a few training images (as in LVIS after removing rare
annotations), in the validation set like every other category, and in the pretraining captions
as often as any other category (as CLIP saw rare LVIS classes in web captions).
"""

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ...clip.crops import square_resize
from .captions import make_captions
from .render import compose_scene, mask_to_polygons
from .shapes import OBJECT_KINDS, ObjectKind, kind_by_name

__all__ = ["SyntheticConfig", "generate_synthetic_dataset", "frequency_thresholds", "frequency_of"]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
SPLIT_CODES = {"train": 1, "val": 2, "pretrain": 3}
PRETRAIN_STYLES = ("objects", "scene_crops")
SCENE_CROP_CAPTION = "a photo of a {}."


@dataclass
class SyntheticConfig:
    """Everything that determines the generated dataset (recorded in ``meta.json``)."""

    seed: int = 0
    num_train: int = 1000
    num_val: int = 200
    num_pretrain: int = 5000
    image_size: int = 128  # square detection images, pixels
    pretrain_image_size: int = 64  # square caption images; 0: same as image_size
    min_objects: int = 1
    max_objects: int = 5
    pretrain_max_objects: int = 3
    size_range: Tuple[float, float] = (0.18, 0.45)  # object size / image side, detection splits
    pretrain_size_range: Tuple[float, float] = (0.3, 0.6)
    min_visible: float = 0.6  # occluded objects keep at least this fraction of their pixels
    center_margin: float = 0.2  # object centres stay this many object sizes from the border
    pretrain_center_margin: float = 0.4  # caption images: objects (almost) wholly in view
    pretrain_style: str = "objects"  # "objects" or "scene_crops" (see the module docstring)
    pretrain_context: Tuple[float, float] = (0.0, 0.4)  # scene_crops: context per side / obj size
    pretrain_jitter: float = 0.1  # scene_crops: crop box shift and log-scale, / object size
    frequency_thresholds: Tuple[float, float] = (0.02, 0.10)  # see the module docstring
    captions_per_image: int = 4
    image_format: str = "png"  # "png" (lossless) or "jpg"
    segmentation: str = "polygon"  # "polygon" (exact, pixel-edge) or "rle"
    neg_category_fraction: float = 1.0  # share of absent categories listed as verified negatives
    categories: Optional[List[str]] = field(default=None)  # names from OBJECT_KINDS; None: all

    def validate(self) -> None:
        if self.num_train < 1 or self.num_val < 1 or self.num_pretrain < 0:
            raise ValueError("num_train and num_val must be >= 1, num_pretrain >= 0")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.image_size < 32:
            raise ValueError("image_size must be at least 32 pixels")
        if self.pretrain_style not in PRETRAIN_STYLES:
            raise ValueError(f"pretrain_style must be one of {PRETRAIN_STYLES}")
        if self.image_format not in ("png", "jpg"):
            raise ValueError("image_format must be 'png' or 'jpg'")
        if self.segmentation not in ("polygon", "rle"):
            raise ValueError("segmentation must be 'polygon' or 'rle'")
        lo, hi = self.size_range
        if not 0 < lo <= hi <= 1:
            raise ValueError("size_range must satisfy 0 < lo <= hi <= 1")

    def kinds(self) -> List[ObjectKind]:
        if self.categories is None:
            return list(OBJECT_KINDS)
        table = kind_by_name()
        unknown = [n for n in self.categories if n not in table]
        if unknown:
            raise ValueError(f"Unknown categories {unknown}; known: {sorted(table)}")
        return [table[n] for n in self.categories]


def frequency_thresholds(num_train: int, fractions: Sequence[float]) -> Tuple[int, int]:
    """``(t_r, t_c)``: the largest image counts of the rare and of the common categories."""
    t_r = max(1, int(round(fractions[0] * num_train)))
    return t_r, max(t_r + 1, int(round(fractions[1] * num_train)))


def frequency_of(image_count: int, t_r: int, t_c: int) -> str:
    """LVIS frequency letter of a category seen in ``image_count`` training images ("r" for 0
    too: a category never seen in training is as rare as it gets)."""
    return "r" if image_count <= t_r else "c" if image_count <= t_c else "f"


# ---- planning: which categories go into which image -------------------------------------------
def _plan_train(rng, cfg: SyntheticConfig, kinds: Sequence[ObjectKind]) -> List[List[int]]:
    n = cfg.num_train
    t_r, t_c = frequency_thresholds(n, cfg.frequency_thresholds)
    frequent = [i for i, k in enumerate(kinds) if k.tier == "f"]
    if not frequent:
        raise ValueError("The category list needs at least one frequent ('f') category")
    if n <= t_c:
        raise ValueError(f"num_train={n} is too small for frequent categories (> {t_c} images)")
    n_obj = rng.integers(cfg.min_objects, cfg.max_objects + 1, n)
    plan: List[List[int]] = [[] for _ in range(n)]
    for i, k in enumerate(kinds):
        if k.tier == "f":
            continue
        lo, hi = (1, t_r) if k.tier == "r" else (t_r + 1, t_c)
        count = int(rng.integers(lo, hi + 1))
        # prefer images with the fewest planned objects, to keep scenes within max_objects
        load = np.array([len(p) for p in plan]) + rng.random(n)
        for img in np.argsort(load)[:count]:
            plan[int(img)].append(i)
    for img in range(n):
        while len(plan[img]) < n_obj[img]:
            plan[img].append(int(rng.choice(frequent)))
    for i in frequent:  # guarantee "f": more than t_c images
        have = [img for img in range(n) if i in plan[img]]
        missing = t_c + 1 - len(have)
        if missing > 0:
            lacking = [img for img in range(n) if i not in plan[img]]
            for img in rng.choice(lacking, missing, replace=False):
                plan[int(img)].append(i)
    return plan


def _plan_balanced(rng, num_images: int, lo: int, hi: int, num_classes: int) -> List[List[int]]:
    """Every category equally often: objects are drawn from shuffled rounds of all categories."""
    n_obj = rng.integers(lo, hi + 1, num_images)
    stream: List[int] = []
    plan = []
    for k in n_obj:
        objs: List[int] = []
        while len(objs) < k:
            if not stream:
                stream = list(rng.permutation(num_classes))
            objs.append(int(stream.pop()))
        plan.append(objs)
    return plan


# ---- rendering one image ------------------------------------------------------------------------
def _render(cfg, split, index, planned, kinds, size, size_range, margin):
    """Draw image ``index`` of ``split``; retry (new sub-seed) if a planned object found no pose,
    so that category counts follow the plan."""
    for attempt in range(6):
        rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], index, attempt])
        img, placed = compose_scene(
            rng,
            (size, size),
            [(kinds[c], c + 1) for c in planned],
            size_range,
            min_visible=cfg.min_visible,
            center_margin=margin,
        )
        if len(placed) == len(planned):
            break
    return img, placed, rng


def crop_with_context(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    context: Tuple[float, float],
    jitter: float,
) -> Optional[np.ndarray]:
    """A crop of ``image`` around the object ``mask``: its box enlarged by a random context
    (``context`` range, fraction of the box size on each side), shifted by up to ``jitter`` of
    the box size and scaled by up to exp(+-``jitter``), clipped to the image (None if under 4 px).
    """
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    w, h = x1 - x0, y1 - y0
    c = rng.uniform(*context)
    cx = (x0 + x1) / 2 + rng.uniform(-jitter, jitter) * w
    cy = (y0 + y1) / 2 + rng.uniform(-jitter, jitter) * h
    cw = w * (1 + 2 * c) * np.exp(rng.uniform(-jitter, jitter))
    ch = h * (1 + 2 * c) * np.exp(rng.uniform(-jitter, jitter))
    H, W = image.shape[:2]
    a0, b0 = max(0, int(np.floor(cx - cw / 2))), max(0, int(np.floor(cy - ch / 2)))
    a1, b1 = min(W, int(np.ceil(cx + cw / 2))), min(H, int(np.ceil(cy + ch / 2)))
    if a1 - a0 < 4 or b1 - b0 < 4:
        return None
    return image[b0:b1, a0:a1]


def _write_scene_crops(cfg, plan, kinds, tmp, ext, captions, bar) -> None:
    """The "scene_crops" caption images: scene after scene of ``plan`` until ``num_pretrain``
    crops, one per placed object (see the module docstring)."""
    side = cfg.pretrain_image_size or cfg.image_size
    for scene, planned in enumerate(plan):
        img, placed, rng = _render(
            cfg, "pretrain", scene, planned, kinds, cfg.image_size, cfg.size_range,
            cfg.center_margin,
        )  # fmt: skip
        for obj in placed:
            crop = crop_with_context(rng, img, obj.mask, cfg.pretrain_context, cfg.pretrain_jitter)
            if crop is None:
                continue
            index = len(captions) + 1
            file_name = f"images/pretrain/{index:06d}.{ext}"
            _write_image(os.path.join(tmp, file_name), square_resize(crop, side), ext)
            caption = SCENE_CROP_CAPTION.format(obj.kind.name)
            captions.append(
                {
                    "image_id": index,
                    "file_name": file_name,
                    "caption": caption,
                    "captions": [caption],
                    "category_ids": [obj.category_id],
                    "category_names": [obj.kind.name],
                }
            )
            bar.update()
            if len(captions) == cfg.num_pretrain:
                return


def _encode_segmentation(mask: np.ndarray, fmt: str):
    if fmt == "rle":
        import pycocotools.mask as mask_util

        rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        return rle
    polygons, has_hole = mask_to_polygons(mask)
    if has_hole:  # compose_scene rejects poses that make holes; this is a safety net
        raise RuntimeError("internal error: a generated mask has a hole")
    return polygons


def _write_image(path: str, rgb: np.ndarray, fmt: str) -> None:
    params = [cv2.IMWRITE_PNG_COMPRESSION, 1] if fmt == "png" else [cv2.IMWRITE_JPEG_QUALITY, 95]
    if not cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"Could not write {path}")


def _dump_json(obj, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, separators=(",", ":")))  # dumps uses the C encoder, dump does not


def _same_config(out_dir: str, config: Dict) -> bool:
    try:
        with open(os.path.join(out_dir, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return meta.get("config") == config and meta.get("generator_version") == GENERATOR_VERSION


# ---- the generator ---------------------------------------------------------------------------
def generate_synthetic_dataset(
    out_dir: str,
    config: Optional[SyntheticConfig] = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    **overrides,
) -> Dict:
    """Generate the dataset into ``out_dir`` (see the module docstring for the layout).

    Args:
        out_dir: the dataset folder (created; e.g. ``$DETECTRON2_DATASETS/ovdet_synthetic``).
        config: a :class:`SyntheticConfig`; keyword ``overrides`` replace its fields
            (``generate_synthetic_dataset(d, seed=1, num_train=200)``).
        overwrite: replace an existing dataset made with a different config. A folder that
            already holds a dataset of the same config and generator version is kept as it is.
        progress: show a tqdm bar.

    Returns:
        the content of ``meta.json`` (config, categories with frequency and counts, seconds).

    The folder appears atomically: everything is written to ``<out_dir>.partial-<pid>`` first and
    renamed at the end, so a reader never sees half a dataset.
    """
    from tqdm import tqdm

    cfg = SyntheticConfig(**{**asdict(config or SyntheticConfig()), **overrides})
    cfg.validate()
    config_dict = json.loads(json.dumps(asdict(cfg)))  # tuples -> lists, as meta.json stores them
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and os.listdir(out_dir):
        if _same_config(out_dir, config_dict) and not overwrite:
            logger.info(f"{out_dir} already holds this dataset (same config); not regenerating")
            with open(os.path.join(out_dir, "meta.json"), encoding="utf-8") as f:
                return json.load(f)
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} exists and holds something else (no meta.json with this config). "
                "Pass overwrite=True (--overwrite) to replace it, or choose another folder."
            )
    start = time.perf_counter()
    kinds = cfg.kinds()
    size, pre_size = cfg.image_size, cfg.pretrain_image_size or cfg.image_size
    plan_rng = np.random.default_rng([cfg.seed, 0])
    plans = {
        "train": _plan_train(plan_rng, cfg, kinds),
        "val": _plan_balanced(plan_rng, cfg.num_val, cfg.min_objects, cfg.max_objects, len(kinds)),
        "pretrain": (
            _plan_balanced(plan_rng, cfg.num_pretrain, 1, cfg.pretrain_max_objects, len(kinds))
            if cfg.pretrain_style == "objects"
            else _plan_balanced(
                plan_rng, cfg.num_pretrain, cfg.min_objects, cfg.max_objects, len(kinds)
            )
        ),
    }
    tmp = f"{out_dir}.partial-{os.getpid()}"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    ext = "png" if cfg.image_format == "png" else "jpg"
    all_ids = list(range(1, len(kinds) + 1))
    images: Dict[str, List[dict]] = {"train": [], "val": []}
    annotations: Dict[str, List[dict]] = {"train": [], "val": []}
    captions: List[dict] = []
    total = sum(len(p) for p in plans.values())
    bar = tqdm(total=total, desc="ovdet synthetic", unit="img", disable=not progress)
    try:
        for split in ("train", "val", "pretrain"):
            os.makedirs(os.path.join(tmp, "images", split))
            if split == "pretrain" and cfg.pretrain_style == "scene_crops":
                _write_scene_crops(cfg, plans[split], kinds, tmp, ext, captions, bar)
                continue
            side = pre_size if split == "pretrain" else size
            srange = cfg.pretrain_size_range if split == "pretrain" else cfg.size_range
            margin = cfg.pretrain_center_margin if split == "pretrain" else cfg.center_margin
            for index, planned in enumerate(plans[split]):
                img, placed, rng = _render(cfg, split, index, planned, kinds, side, srange, margin)
                file_name = f"images/{split}/{index + 1:06d}.{ext}"
                _write_image(os.path.join(tmp, file_name), img, ext)
                present = sorted({o.category_id for o in placed})
                if split == "pretrain":
                    caps = make_captions(placed, side, side, rng, cfg.captions_per_image)
                    captions.append(
                        {
                            "image_id": index + 1,
                            "file_name": file_name,
                            "caption": caps[0],
                            "captions": caps,
                            "category_ids": present,
                            "category_names": [kinds[c - 1].name for c in present],
                        }
                    )
                    bar.update()
                    continue
                absent = [c for c in all_ids if c not in present]
                if cfg.neg_category_fraction < 1:
                    k = int(round(cfg.neg_category_fraction * len(absent)))
                    absent = sorted(int(c) for c in rng.choice(absent, k, replace=False))
                images[split].append(
                    {
                        "id": index + 1,
                        "file_name": file_name,
                        "height": side,
                        "width": side,
                        "neg_category_ids": absent,
                        "not_exhaustive_category_ids": [],
                    }
                )
                for o in placed:
                    ys, xs = np.nonzero(o.mask)
                    x0, y0 = int(xs.min()), int(ys.min())
                    annotations[split].append(
                        {
                            "id": len(annotations[split]) + 1,
                            "image_id": index + 1,
                            "category_id": o.category_id,
                            "bbox": [x0, y0, int(xs.max()) + 1 - x0, int(ys.max()) + 1 - y0],
                            "area": int(o.mask.sum()),
                            "segmentation": _encode_segmentation(o.mask, cfg.segmentation),
                            # extra field (LVIS tools ignore it): shown / whole object pixels
                            "visible_fraction": round(o.visible_fraction, 3),
                        }
                    )
                bar.update()
        bar.close()
        meta = _finish(tmp, cfg, config_dict, kinds, images, annotations, captions, start)
        if os.path.exists(out_dir):
            old = f"{out_dir}.old-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old)
        else:
            os.makedirs(os.path.dirname(out_dir), exist_ok=True)
            os.replace(tmp, out_dir)
    finally:
        bar.close()
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    logger.info(
        f"Generated {out_dir}: {len(images['train'])} train, {len(images['val'])} val, "
        f"{len(captions)} caption images in {meta['seconds']:.1f} s"
    )
    return meta


def _finish(tmp, cfg, config_dict, kinds, images, annotations, captions, start) -> Dict:
    """Compute frequencies from the training counts, write the JSON files and meta.json."""
    n = cfg.num_train
    t_r, t_c = frequency_thresholds(n, cfg.frequency_thresholds)
    img_sets = {c: set() for c in range(1, len(kinds) + 1)}
    inst = {c: 0 for c in img_sets}
    for a in annotations["train"]:
        img_sets[a["category_id"]].add(a["image_id"])
        inst[a["category_id"]] += 1
    categories = []
    for i, k in enumerate(kinds):
        cid = i + 1
        freq = frequency_of(len(img_sets[cid]), t_r, t_c)
        if (freq == "r") != (k.tier == "r"):
            raise RuntimeError(
                f"Category {k.name!r} (planned {k.tier!r}) landed in {len(img_sets[cid])} training "
                f"images, which makes it {freq!r} (t_r={t_r}, t_c={t_c}). Use more training "
                "images or other frequency_thresholds."
            )
        categories.append(
            {
                "id": cid,
                "name": k.name,
                "synonyms": [k.name],
                "synset": "synthetic." + k.name.replace(" ", "_"),
                "def": k.definition,
                "frequency": freq,
                "image_count": len(img_sets[cid]),
                "instance_count": inst[cid],
            }
        )
    rare = {c["id"] for c in categories if c["frequency"] == "r"}
    info = {"description": "ovdet_plugin synthetic open-vocabulary dataset", "version": "1"}
    base = {"info": info, "licenses": [], "categories": categories}
    _dump_json({**base, "images": images["train"], "annotations": annotations["train"]},
               os.path.join(tmp, "train_all.json"))  # fmt: skip
    ov_images = [dict(img) for img in images["train"]]
    by_image: Dict[int, set] = {}
    for a in annotations["train"]:
        if a["category_id"] in rare:
            by_image.setdefault(a["image_id"], set()).add(a["category_id"])
    for img in ov_images:  # rare objects stay in the pixels, unannotated: not exhaustive
        img["not_exhaustive_category_ids"] = sorted(by_image.get(img["id"], ()))
    ov_anns = [a for a in annotations["train"] if a["category_id"] not in rare]
    _dump_json({**base, "images": ov_images, "annotations": ov_anns},
               os.path.join(tmp, "train.json"))  # fmt: skip
    _dump_json({**base, "images": images["val"], "annotations": annotations["val"]},
               os.path.join(tmp, "val.json"))  # fmt: skip
    with open(os.path.join(tmp, "captions.jsonl"), "w", encoding="utf-8") as f:
        for line in captions:
            f.write(json.dumps(line) + "\n")
    meta = {
        "generator_version": GENERATOR_VERSION,
        "config": config_dict,
        "frequency_rule": {
            "t_r": t_r,
            "t_c": t_c,
            "rule": "r: 1..t_r training images, c: t_r+1..t_c, f: > t_c "
            "(t_r = max(1, round(a*N)), t_c = max(t_r+1, round(b*N)), (a, b) = "
            "frequency_thresholds, N = num_train)",
        },
        "categories": categories,
        "counts": {
            "train_images": len(images["train"]),
            "train_annotations": len(ov_anns),
            "train_all_annotations": len(annotations["train"]),
            "val_images": len(images["val"]),
            "val_annotations": len(annotations["val"]),
            "pretrain_images": len(captions),
        },
        "files": ["train.json", "train_all.json", "val.json", "captions.jsonl", "images/"],
        "seconds": round(time.perf_counter() - start, 2),
    }
    _dump_json(meta, os.path.join(tmp, "meta.json"))
    return meta
