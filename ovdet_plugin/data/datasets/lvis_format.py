"""Register any LVIS-format dataset (a user's own, or the generated one) with metadata built
from the JSON's own categories.

Detectron2's ``register_lvis_instances``/``load_lvis_json`` only know the metadata of dataset
names containing ``lvis_v0.5``, ``lvis_v1`` or ``cocofied``, and map ``category_id - 1`` to
contiguous ids (see ``detectron2/data/datasets/lvis.py``). This registration instead reads the
categories from the file: contiguous id ``i`` is the ``i``-th category sorted by id, and
``thing_dataset_id_to_contiguous_id`` lets the stock ``LVISEvaluator`` map predictions back.
Base/novel flags come from :mod:`ovdet_plugin.vocabulary`'s rule for JSON categories (an
explicit ``"split"`` wins, else ``frequency == "r"`` is novel).

Differences from ``load_lvis_json``: images are found by ``file_name`` (relative to
``image_root``) when present, else by ``coco_url`` like LVIS; segmentations may be polygons or
COCO RLE (RLE needs ``INPUT.MASK_FORMAT = "bitmask"`` in training).
"""

import logging
import os
from collections import Counter
from typing import Dict, List, Optional, Sequence

from detectron2.data import MetadataCatalog
from detectron2.structures import BoxMode

from ...vocabulary import BASE, load_vocabulary
from .common import (
    OTHER_CLASS,
    class_image_count,
    count_drop,
    log_dropped,
    ov_metadata,
    read_json_file,
    register_or_replace,
    require_file,
    require_unique_ids,
)

__all__ = ["load_lvis_format_json", "register_lvis_format_dataset", "lvis_format_metadata"]

logger = logging.getLogger(__name__)

CUSTOM_SECTION = "Your own LVIS-format dataset"


def _read_json(json_file: str) -> dict:
    """The file's content, refused when it is not LVIS-format JSON or has duplicate image or
    category ids (which would put boxes on the wrong image or under the wrong class)."""
    data = read_json_file(json_file)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(
                f"{json_file} is not an LVIS-format file: it has no {key!r} list. Pass an LVIS or "
                "COCO instances JSON (with 'images', 'annotations' and 'categories')."
            )
    require_unique_ids(data["images"], "image", json_file)
    require_unique_ids(data["categories"], "category", json_file)
    return data


def _category_ids(data: dict) -> List[int]:
    return sorted(int(c["id"]) for c in data["categories"])


def lvis_format_metadata(json_file: str, data: dict, base_only: bool = False) -> Dict:
    """The metadata of an LVIS-format file (see the module docstring), including
    ``class_image_count`` counted from the annotations that are loaded (so classes whose
    annotations ``base_only`` removes count 0, which keeps federated-loss weights honest)."""
    if not json_file.endswith(".json"):
        raise ValueError(f"An LVIS-format annotation file must end in .json, got {json_file!r}")
    vocab = load_vocabulary(json_file)  # the categories, with vocabulary.py's base/novel rule
    ids = _category_ids(data)
    if len(vocab) != len(ids):
        raise ValueError(f"{json_file}: {len(ids)} category ids but {len(vocab)} classes read")
    meta = ov_metadata(vocab, ids)
    meta["thing_class_synonyms"] = [list(s) for s in vocab.synonyms]
    keep = _kept_ids(meta, base_only)
    per_image: Dict[int, List[int]] = {}
    for ann in data["annotations"]:
        if ann.get("category_id") in keep:
            per_image.setdefault(ann.get("image_id"), []).append(ann["category_id"])
    meta["class_image_count"] = class_image_count(list(per_image.values()), ids)
    return meta


def _kept_ids(meta: Dict, base_only: bool) -> set:
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    if not base_only:
        return set(id_map)
    return {d for d, i in id_map.items() if meta["thing_class_splits"][i] == BASE}


def _set_metadata(name: str, meta: Dict) -> None:
    """Set ``meta`` on ``name``; if the file changed since registration (different values),
    replace the stale entries instead of failing on Detectron2's "cannot be set to a different
    value" assertion."""
    m = MetadataCatalog.get(name)
    stale = [k for k, v in meta.items() if hasattr(m, k) and getattr(m, k) != v]
    if stale:
        logger.warning(f"Metadata of {name!r} changed since registration ({stale}); replacing it")
        old = {k: v for k, v in m.as_dict().items() if k != "name" and k not in meta}
        MetadataCatalog.remove(name)
        MetadataCatalog.get(name).set(**old)
    MetadataCatalog.get(name).set(**meta)


def _image_path(image_root: str, img: dict) -> str:
    if "file_name" in img:
        return os.path.join(image_root, img["file_name"])
    if "coco_url" in img:  # LVIS: ".../train2017/000000155379.jpg" -> image_root/train2017/...
        split_folder, file_name = img["coco_url"].split("/")[-2:]
        return os.path.join(image_root, split_folder, file_name)
    raise ValueError(f"Image {img.get('id')} has neither 'file_name' nor 'coco_url'")


def _valid_segmentation(segm):
    """Polygons with at least 3 points (as Detectron2 requires), or an RLE dict as is."""
    if isinstance(segm, dict):
        return segm
    polys = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
    return polys or None


def load_lvis_format_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    base_only: bool = False,
    extra_annotation_keys: Sequence[str] = (),
    readme_section: str = CUSTOM_SECTION,
    missing_hint: str = "",
) -> List[Dict]:
    """Load an LVIS-format JSON into Detectron2 dataset dicts.

    Args:
        json_file: the annotation file.
        image_root: the folder that image ``file_name``\\ s are relative to.
        dataset_name: if given, its metadata is set (see :func:`lvis_format_metadata`).
        base_only: drop the annotations of every class that is not "base" (open-vocabulary
            training: novel classes keep no box), keeping the images.
        extra_annotation_keys: annotation keys copied as they are.
        readme_section: the datasets/README.md section named when the file is missing.
        missing_hint: a sentence added to that error (e.g. the command that makes the file).

    Returns:
        list[dict] in Detectron2's standard format; ``category_id`` is contiguous, and each record
        keeps LVIS's ``neg_category_ids`` / ``not_exhaustive_category_ids`` (dataset ids).
    """
    require_file(json_file, "LVIS-format annotation file", readme_section, missing_hint)
    data = _read_json(json_file)
    meta = lvis_format_metadata(json_file, data, base_only)
    if dataset_name is not None:
        _set_metadata(dataset_name, meta)
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    keep = _kept_ids(meta, base_only)

    anns_per_image: Dict[int, List[dict]] = {}
    ann_ids = set()
    image_ids = {img["id"] for img in data["images"]}
    dropped: Counter = Counter()
    for ann in data["annotations"]:
        if ann.get("id") in ann_ids:
            raise ValueError(
                f"Annotation id {ann.get('id')} appears twice in {json_file}; give every "
                "annotation a unique id."
            )
        ann_ids.add(ann.get("id"))
        if ann.get("category_id") not in id_map:
            raise ValueError(
                f"Annotation {ann.get('id')} in {json_file} has category_id "
                f"{ann.get('category_id')}, which is not in the file's 'categories'; add the "
                "category or remove the annotation."
            )
        if ann.get("image_id") not in image_ids:
            dropped["pointing to an unknown image_id"] += 1
            continue
        anns_per_image.setdefault(ann["image_id"], []).append(ann)

    dataset_dicts = []
    for img in sorted(data["images"], key=lambda x: x["id"]):
        record = {
            "file_name": _image_path(image_root, img),
            "height": img["height"],
            "width": img["width"],
            "image_id": img["id"],
            "neg_category_ids": img.get("neg_category_ids", []),
            "not_exhaustive_category_ids": img.get("not_exhaustive_category_ids", []),
        }
        objs = []
        for ann in anns_per_image.get(img["id"], []):
            if count_drop(ann, keep, img["width"], img["height"], dropped):
                continue
            obj = {
                "bbox": ann["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[ann["category_id"]],
            }
            if "segmentation" in ann:
                segm = _valid_segmentation(ann["segmentation"])
                if segm is None:
                    dropped["with polygons all of < 3 points"] += 1
                    continue
                obj["segmentation"] = segm
            if "iscrowd" in ann:
                obj["iscrowd"] = ann["iscrowd"]
            for key in extra_annotation_keys:
                obj[key] = ann[key]
            objs.append(obj)
        record["annotations"] = objs
        dataset_dicts.append(record)

    missing = [r["file_name"] for r in dataset_dicts if not os.path.isfile(r["file_name"])]
    if missing and len(missing) == len(dataset_dicts):
        raise FileNotFoundError(
            f"None of the {len(missing)} images of {json_file} is on disk (e.g. {missing[0]!r}). "
            f"Check image_root ({image_root!r}) and the images' file_name / coco_url."
        )
    if missing:  # found now, not in the middle of training
        logger.warning(
            f"{json_file}: dropped {len(missing)} image(s) missing on disk (e.g. {missing[0]!r})"
        )
        gone = set(missing)
        dataset_dicts = [r for r in dataset_dicts if r["file_name"] not in gone]
    kept = sum(len(r["annotations"]) for r in dataset_dicts)
    removed = dropped.pop(OTHER_CLASS, 0)
    if base_only and data["annotations"] and not kept:
        raise ValueError(
            f"{json_file}: base_only removed every annotation (no category is 'base': each is "
            "frequency 'r' or split 'novel'). Mark the training classes base (frequency 'f'/'c' "
            'or "split": "base"), or register the dataset with base_only=False.'
        )
    logger.info(
        f"Loaded {len(dataset_dicts)} images, {kept} annotations "
        f"of {len(id_map)} classes from {json_file}"
        + (f"; removed {removed} annotations of non-base classes" if base_only else "")
    )
    log_dropped(dropped, json_file)
    return dataset_dicts


def register_lvis_format_dataset(
    name: str,
    json_file: str,
    image_root: str,
    *,
    base_only: bool = False,
    extra_metadata: Optional[Dict] = None,
    readme_section: str = CUSTOM_SECTION,
    eager_metadata: bool = True,
    missing_hint: str = "",
) -> None:
    """Register an LVIS-format dataset under ``name`` for Detectron2 (``evaluator_type="lvis"``,
    so ``LVISEvaluator`` evaluates it, with APr/APc/APf from the categories' ``frequency``).

    The file is read when the dataset is loaded (``DatasetCatalog.get``); a missing file then
    raises ``FileNotFoundError`` naming the path. With ``eager_metadata`` and an existing file,
    the class metadata is filled now too, so that ``MetadataCatalog.get(name).thing_classes``
    works before loading (otherwise it is filled when the dataset is loaded).

    Args:
        name: the dataset name (any string; an existing registration is replaced).
        json_file, image_root: the annotation file and the folder its ``file_name``\\ s are in.
        base_only: drop non-base annotations at load time (open-vocabulary training split).
        extra_metadata: more metadata entries.
        readme_section: the datasets/README.md section named when a file is missing.
        eager_metadata: read the class metadata now if the file exists.
        missing_hint: a sentence added to the missing-file error.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    register_or_replace(
        name,
        lambda: load_lvis_format_json(
            json_file,
            image_root,
            name,
            base_only=base_only,
            readme_section=readme_section,
            missing_hint=missing_hint,
        ),
        dict(
            json_file=json_file,
            image_root=image_root,
            evaluator_type="lvis",
            base_only=base_only,
            **(extra_metadata or {}),
        ),
    )
    if eager_metadata and os.path.isfile(json_file):
        try:
            _set_metadata(name, lvis_format_metadata(json_file, _read_json(json_file), base_only))
        except (ValueError, KeyError) as e:  # reported again at load time
            logger.warning(f"Could not read the metadata of {name!r} from {json_file}: {e}")
