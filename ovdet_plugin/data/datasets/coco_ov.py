"""OV-COCO (the 48 base / 17 novel split of Bansal et al. 2018, as used by OVR-CNN, ViLD, F-VLM,
CLIPSelf; methods (protocols)).

Registered names (class space: the 65 classes of the split, in COCO id order, for both, so
contiguous ids agree between training and evaluation):

- ``coco_2017_ov_train``: COCO 2017 train, filtered at load time from the standard
  ``instances_train2017.json``: annotations of the 48 base classes only; images left without any
  base annotation are dropped (as in OVR-CNN's ``instances_train2017_seen_2.json``). Novel objects
  stay in the images, unannotated.
- ``coco_2017_ov_val``: the generalized validation set: COCO 2017 val with the annotations of all
  65 classes (``instances_val2017_ov65.json``, written by ``datasets/prepare_ov_coco.py`` from the
  standard ``instances_val2017.json``: the 65 categories, their annotations, the images that have
  at least one). ``evaluator_type="ov_coco"``: evaluate with
  :class:`ovdet_plugin.evaluation.OVCOCOEvaluator` (AP50 novel/base/all + the COCO metrics).

Base/novel flags come from :mod:`ovdet_plugin.vocabulary` (``COCO_OV_BASE``/``COCO_OV_NOVEL``)
into the metadata (``thing_class_splits``), never from class counts or dataset names.
"""

import json
import logging
import os
from typing import Dict, List, Optional

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from ...utils.atomic_io import atomic_write_path
from ...vocabulary import BASE, coco_vocabulary
from .common import (
    datasets_root,
    load_coco_dicts,
    map_and_filter_annotations,
    ov_metadata,
    register_or_replace,
    require_file,
)

__all__ = [
    "OV_COCO_SPLITS",
    "ov_coco_class_ids",
    "ov_coco_metadata",
    "load_ov_coco_json",
    "make_ov_coco_json",
    "register_ov_coco",
]

logger = logging.getLogger(__name__)

README_SECTION = "OV-COCO"

# name -> (image root, annotation file, base_only), relative to the data root.
OV_COCO_SPLITS = {
    "coco_2017_ov_train": ("coco/train2017", "coco/annotations/instances_train2017.json", True),
    "coco_2017_ov_val": ("coco/val2017", "coco/annotations/instances_val2017_ov65.json", False),
}


def ov_coco_class_ids() -> List[int]:
    """COCO category ids of the 65 OV-COCO classes, in the order of ``coco_vocabulary(True)``."""
    ids = {c["name"]: c["id"] for c in COCO_CATEGORIES if c["isthing"]}
    return [ids[n] for n in coco_vocabulary(ov_only=True).names]


def ov_coco_metadata() -> Dict:
    """``thing_classes`` (65), ``thing_dataset_id_to_contiguous_id``, ``thing_class_splits``
    (48 "base", 17 "novel"), ``thing_class_frequency`` (empty strings) and the colours of
    Detectron2's COCO metadata."""
    vocab = coco_vocabulary(ov_only=True)
    meta = ov_metadata(vocab, ov_coco_class_ids())
    colors = {c["name"]: c["color"] for c in COCO_CATEGORIES}
    meta["thing_colors"] = [colors[n] for n in vocab.names]
    return meta


def load_ov_coco_json(json_file: str, image_root: str, base_only: bool) -> List[Dict]:
    """Load a COCO-format file into dataset dicts over the 65 OV-COCO classes.

    Annotations of the 15 classes outside the split are dropped; with ``base_only`` the 17 novel
    classes' annotations are dropped too, and so are images left with no annotation.
    """

    hint = (
        "Run `python datasets/prepare_ov_coco.py` first."
        if json_file.endswith("_ov65.json")
        else ""
    )
    require_file(json_file, "COCO annotation file", README_SECTION, hint)
    require_file(image_root, "COCO image folder", README_SECTION)
    # dataset_name=None: load_coco_json leaves the raw COCO category ids; we map them here.
    fix = f"Download it again (see datasets/README.md, section '{README_SECTION}')."
    dicts = load_coco_dicts(json_file, image_root, fix)
    result = map_and_filter_annotations(
        dicts, ov_coco_metadata(), base_only, drop_empty=base_only, source=json_file
    )
    out, removed = result["dicts"], result["removed"]
    logger.info(
        f"OV-COCO: {len(out)} of {len(dicts)} images from {json_file}; removed {removed} "
        f"annotations of classes outside the {'48 base' if base_only else '65'} classes"
    )
    return out


def make_ov_coco_json(src_json: str, dst_json: str, base_only: bool = False) -> Dict[str, int]:
    """Write the OV-COCO subset of a standard COCO instances file: only the 65 categories (or
    the 48 base ones with ``base_only``), their annotations, and the images having at least one
    of them. Returns counts of what was written. The write is atomic."""
    require_file(src_json, "COCO annotation file", README_SECTION)
    with open(src_json, encoding="utf-8") as f:
        data = json.load(f)
    meta = ov_coco_metadata()
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    keep = {d for d, i in id_map.items() if not base_only or meta["thing_class_splits"][i] == BASE}
    found = {c["id"]: c["name"] for c in data["categories"]}
    for d in keep:
        expected = meta["thing_classes"][id_map[d]]
        if found.get(d) != expected:
            raise ValueError(
                f"{src_json}: category id {d} is {found.get(d)!r}, expected {expected!r}. "
                "Is this a COCO 2017 instances file?"
            )
    anns = [a for a in data["annotations"] if a["category_id"] in keep]
    img_ids = {a["image_id"] for a in anns}
    out = dict(data)
    out["categories"] = [c for c in data["categories"] if c["id"] in keep]
    out["annotations"] = anns
    out["images"] = [im for im in data["images"] if im["id"] in img_ids]
    with atomic_write_path(dst_json) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(out, f)
    counts = {
        "images": len(out["images"]),
        "annotations": len(anns),
        "categories": len(out["categories"]),
    }
    logger.info(f"Wrote {dst_json}: {counts}")
    return counts


def register_ov_coco(root: Optional[str] = None, names: Optional[Dict] = None) -> None:
    """Register the OV-COCO splits.

    Args:
        root: the data root; default ``$DETECTRON2_DATASETS`` or ``./datasets``.
        names: ``{name: (image_root, json_file, base_only)}`` relative to ``root``; default
            :data:`OV_COCO_SPLITS`.
    """
    root = datasets_root() if root is None else os.fspath(root)
    for name, (image_root, json_file, base_only) in (names or OV_COCO_SPLITS).items():
        image_root, json_file = os.path.join(root, image_root), os.path.join(root, json_file)
        metadata = dict(image_root=image_root, base_only=base_only, **ov_coco_metadata())
        if base_only:
            # The source file still has all 80 classes; without json_file, a COCOEvaluator run on
            # this set converts the loaded (filtered) dicts instead of reading the wrong file.
            metadata.update(source_json_file=json_file, evaluator_type="coco")
        else:
            metadata.update(json_file=json_file, evaluator_type="ov_coco")
        register_or_replace(
            name,
            lambda j=json_file, i=image_root, b=base_only: load_ov_coco_json(j, i, b),
            metadata,
        )
