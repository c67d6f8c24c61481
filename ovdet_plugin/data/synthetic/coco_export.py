"""The generated dataset in plain COCO format, with a base/novel split file: the input the README
walkthrough "Train on your own data" expects, so that it can be tried (and is tested) without
your own data.

``export_coco_format(dataset_dir)`` writes ``<dataset_dir>/annotations/{train,val}.json``
(COCO instances files: ``iscrowd`` set, LVIS-only fields dropped, images' ``file_name`` relative
to ``dataset_dir``) and ``<dataset_dir>/annotations/novel.txt`` (the rare kinds, one per line).
The train file keeps every annotation of ``train_all.json``, as a user's own file would; the
novel classes are removed at load time by ``base_only=true``.
"""

import json
import os
from typing import Dict

from ...utils.atomic_io import atomic_write_path

__all__ = ["export_coco_format"]

_LVIS_ONLY_IMAGE_KEYS = ("neg_category_ids", "not_exhaustive_category_ids")


def _to_coco(data: Dict) -> Dict:
    images = [
        {k: v for k, v in im.items() if k not in _LVIS_ONLY_IMAGE_KEYS} for im in data["images"]
    ]
    annotations = []
    for ann in data["annotations"]:
        out = {k: ann[k] for k in ("id", "image_id", "category_id", "bbox", "area")}
        out["segmentation"] = ann["segmentation"]
        out["iscrowd"] = 0
        annotations.append(out)
    categories = [
        {"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in data["categories"]
    ]
    return {
        "info": data.get("info", {}),
        "licenses": data.get("licenses", []),
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def export_coco_format(dataset_dir: str) -> Dict[str, str]:
    """Write the COCO-format files (see the module docstring); returns their paths as
    ``{"train": ..., "val": ..., "novel": ...}``."""
    out_dir = os.path.join(dataset_dir, "annotations")
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    for split, source in (("train", "train_all.json"), ("val", "val.json")):
        with open(os.path.join(dataset_dir, source), encoding="utf-8") as f:
            data = json.load(f)
        paths[split] = os.path.join(out_dir, f"{split}.json")
        with atomic_write_path(paths[split]) as tmp, open(tmp, "w", encoding="utf-8") as f:
            json.dump(_to_coco(data), f)
    rare = [c["name"] for c in data["categories"] if c["frequency"] == "r"]
    paths["novel"] = os.path.join(out_dir, "novel.txt")
    with atomic_write_path(paths["novel"]) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("# novel classes: never trained on (base_only=true drops their boxes)\n")
        f.write("".join(n + "\n" for n in rare))
    return paths
