"""LVIS v1 open-vocabulary splits (methods (protocols); the protocol of ViLD, Detic,
F-VLM, CLIPSelf):

- ``lvis_v1_train_ov``: LVIS v1 train with the annotations of the 337 rare classes removed at load
  time (the images stay); base = frequent + common (866 classes). The class space keeps all 1203
  classes, so contiguous ids are the same as in ``lvis_v1_val``.
- ``lvis_v1_val``: all 1203 classes; Detectron2's stock ``LVISEvaluator`` reports AP, APr, APc,
  APf for boxes and masks (``detectron2/evaluation/lvis_evaluation.py``).

Both read the official files under ``$DETECTRON2_DATASETS`` with Detectron2's ``load_lvis_json``
(images found through ``coco_url``, under ``coco/train2017`` and ``coco/val2017``), the same
layout as Detectron2's builtin ``lvis_v1_train``/``lvis_v1_val``. Detectron2 registers
``lvis_v1_val`` at import; the plugin re-registers it with the same files and loader, adding the
base/novel metadata and a missing-file error that names the path.

Metadata (besides ``json_file``, ``image_root``, ``evaluator_type="lvis"``):
``thing_classes`` (LVIS v1 ``name``\\ s; Detectron2's own uses ``synonyms[0]``, which differs for
one class: "bull" vs "horned_cow"), ``thing_dataset_id_to_contiguous_id`` (id - 1),
``thing_class_splits``, ``thing_class_frequency``, ``thing_class_synonyms``,
``class_image_count`` (LVIS v1 train image counts; 0 for rare classes in ``lvis_v1_train_ov``,
whose annotations are gone, so Detectron2's federated loss never samples them).
"""

import logging
import os
from typing import Dict, List, Optional

from ...vocabulary import BASE, lvis_vocabulary
from .common import datasets_root, ov_metadata, register_or_replace, require_file

__all__ = ["LVIS_OV_SPLITS", "register_lvis_v1_ov", "load_lvis_v1_ov"]

logger = logging.getLogger(__name__)

README_SECTION = "LVIS v1 (open-vocabulary)"

# name -> (image root, annotation file, remove rare annotations), relative to the data root;
# the same files as Detectron2's builtin.py _PREDEFINED_SPLITS_LVIS["lvis_v1"].
LVIS_OV_SPLITS = {
    "lvis_v1_train_ov": ("coco", "lvis/lvis_v1_train.json", True),
    "lvis_v1_val": ("coco", "lvis/lvis_v1_val.json", False),
}


def _metadata(base_only: bool) -> Dict:
    from detectron2.data.datasets.lvis_v1_category_image_count import LVIS_CATEGORY_IMAGE_COUNT

    vocab = lvis_vocabulary()
    ids = list(range(1, len(vocab) + 1))  # LVIS v1 category ids are 1..1203, sorted like vocab
    meta = ov_metadata(vocab, ids)
    meta["thing_class_synonyms"] = [list(s) for s in vocab.synonyms]
    counts = {c["id"]: c["image_count"] for c in LVIS_CATEGORY_IMAGE_COUNT}
    meta["class_image_count"] = [
        {"id": i, "image_count": counts[i] if (vocab.splits[i - 1] == BASE or not base_only) else 0}
        for i in ids
    ]
    return meta


def load_lvis_v1_ov(json_file: str, image_root: str, base_only: bool) -> List[Dict]:
    """Load an LVIS v1 file with Detectron2's ``load_lvis_json``; with ``base_only``, drop the
    annotations of the rare (novel) classes. Base/novel flags come from
    :func:`ovdet_plugin.vocabulary.lvis_vocabulary`, never from the file name."""
    from detectron2.data.datasets.lvis import load_lvis_json

    require_file(json_file, "LVIS v1 annotation file", README_SECTION)
    require_file(image_root, "COCO image folder (LVIS v1 uses COCO 2017 images)", README_SECTION)
    # load_lvis_json concatenates image_root and the split folder, hence the trailing separator.
    # No dataset_name: contiguous ids are category_id - 1, the metadata is set at registration.
    dicts = load_lvis_json(json_file, os.path.join(image_root, ""), dataset_name=None)
    if not base_only:
        return dicts
    splits = lvis_vocabulary().splits
    removed = 0
    for record in dicts:
        kept = [a for a in record["annotations"] if splits[a["category_id"]] == BASE]
        removed += len(record["annotations"]) - len(kept)
        record["annotations"] = kept
    logger.info(
        f"Removed {removed} annotations of the {splits.count('novel')} rare (novel) LVIS classes "
        f"from {json_file} (open-vocabulary training)"
    )
    return dicts


def register_lvis_v1_ov(root: Optional[str] = None, names: Optional[Dict] = None) -> None:
    """Register the LVIS v1 open-vocabulary splits.

    Args:
        root: the data root; default ``$DETECTRON2_DATASETS`` or ``./datasets``.
        names: ``{name: (image_root, json_file, base_only)}`` relative to ``root``; default
            :data:`LVIS_OV_SPLITS`. Pass other names to register copies (e.g. in tests).
    """
    root = datasets_root() if root is None else os.fspath(root)
    for name, (image_root, json_file, base_only) in (names or LVIS_OV_SPLITS).items():
        image_root, json_file = os.path.join(root, image_root), os.path.join(root, json_file)
        register_or_replace(
            name,
            lambda j=json_file, i=image_root, b=base_only: load_lvis_v1_ov(j, i, b),
            dict(
                json_file=json_file,
                image_root=image_root,
                evaluator_type="lvis",
                base_only=base_only,
                **_metadata(base_only),
            ),
        )
