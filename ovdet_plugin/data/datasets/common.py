"""Shared helpers of the dataset registrations: the data root, file checks, OV metadata."""

import logging
import os
from typing import Dict, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...vocabulary import BASE, Vocabulary

__all__ = [
    "datasets_root",
    "require_file",
    "ov_metadata",
    "get_dataset_vocabulary",
    "register_or_replace",
    "map_and_filter_annotations",
]

logger = logging.getLogger(__name__)

README = "datasets/README.md"


def datasets_root() -> str:
    """The folder holding every dataset: ``$DETECTRON2_DATASETS`` or ``./datasets``.

    Read exactly like Detectron2's ``detectron2/data/datasets/builtin.py`` does, so that one
    environment variable serves both.
    """
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def require_file(path: str, what: str, section: str, hint: str = "") -> str:
    """Return ``path`` if it exists, else raise ``FileNotFoundError`` naming the path and the
    README section that explains how to get it."""
    if os.path.exists(path):
        return path
    msg = (
        f"{what} not found: looked for {os.path.abspath(path)!r} "
        f"(DETECTRON2_DATASETS={os.getenv('DETECTRON2_DATASETS', '<unset: ./datasets>')}). "
        f"See {README}, section '{section}'."
    )
    if hint:
        msg += " " + hint
    raise FileNotFoundError(msg)


def ov_metadata(vocab: Vocabulary, dataset_ids: Sequence[int]) -> Dict[str, object]:
    """Metadata entries that describe an open-vocabulary class space.

    Args:
        vocab: the K classes in contiguous order (index i = contiguous id i).
        dataset_ids: the K category ids used in the dataset's JSON, in the same order.

    Returns:
        ``thing_classes`` (names), ``thing_dataset_id_to_contiguous_id``,
        ``thing_class_splits`` ("base"/"novel"/"unused" per class, from the vocabulary),
        ``thing_class_frequency`` ("f"/"c"/"r" or "" per class) and ``vocabulary_source``.
    """
    if len(dataset_ids) != len(vocab):
        raise ValueError(f"{len(dataset_ids)} dataset ids for {len(vocab)} classes")
    return {
        "thing_classes": list(vocab.names),
        "thing_dataset_id_to_contiguous_id": {int(d): i for i, d in enumerate(dataset_ids)},
        "thing_class_splits": list(vocab.splits),
        "thing_class_frequency": list(vocab.frequency),
        "vocabulary_source": vocab.source,
    }


def get_dataset_vocabulary(dataset_name: str) -> Vocabulary:
    """The :class:`Vocabulary` of a dataset registered by this plugin (names, synonyms where
    known, base/novel flags, frequency), read from its metadata.

    For datasets whose metadata comes from their JSON file (LVIS-format registrations), the
    metadata is filled when the JSON exists; otherwise this loads the dataset first.
    """
    meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "thing_class_splits"):
        DatasetCatalog.get(dataset_name)  # fills lazily-set metadata (or raises FileNotFoundError)
        meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "thing_class_splits"):
        raise KeyError(
            f"Dataset {dataset_name!r} has no base/novel flags ('thing_class_splits' metadata); "
            "register it with ovdet_plugin.data (e.g. register_lvis_format_dataset)."
        )
    names = meta.thing_classes
    synonyms = meta.get("thing_class_synonyms") or [(n,) for n in names]
    return Vocabulary(
        names=tuple(names),
        synonyms=tuple(tuple(s) for s in synonyms),
        splits=tuple(meta.thing_class_splits),
        frequency=tuple(meta.get("thing_class_frequency") or [""] * len(names)),
        source=meta.get("vocabulary_source", dataset_name),
    )


def register_or_replace(name: str, loader, metadata: Optional[Dict] = None) -> None:
    """Register ``loader`` under ``name`` in the DatasetCatalog, replacing an existing entry
    (and its metadata), then set ``metadata``.

    Replacing is used for ``lvis_v1_val``, which Detectron2 registers itself at import: the plugin
    registers the same files with the same loader, plus a clear missing-file error and OV metadata.
    """
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, loader)
    if metadata:
        MetadataCatalog.get(name).set(**metadata)


def class_image_count(
    annotations_per_image: List[List[int]], dataset_ids: Sequence[int]
) -> List[Dict[str, int]]:
    """``[{"id": dataset_id, "image_count": n}]`` as Detectron2's federated loss reads it
    (``get_fed_loss_cls_weights``), counted from category ids per image."""
    counts = {int(d): 0 for d in dataset_ids}
    for cats in annotations_per_image:
        for c in set(cats):
            if c in counts:
                counts[c] += 1
    return [{"id": d, "image_count": n} for d, n in counts.items()]


def map_and_filter_annotations(
    dicts: List[Dict], meta: Dict, base_only: bool, drop_empty: bool
) -> Dict[str, object]:
    """Map raw category ids of COCO dataset dicts (from ``load_coco_json(dataset_name=None)``)
    to contiguous ids in place, dropping annotations of classes outside the metadata and, with
    ``base_only``, of non-base classes; with ``drop_empty`` images left without annotations are
    dropped. Returns ``{"dicts": kept records, "removed": number of dropped annotations}``."""
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    splits = meta["thing_class_splits"]
    keep = {d for d, i in id_map.items() if not base_only or splits[i] == BASE}
    out, removed = [], 0
    for record in dicts:
        anns = [a for a in record["annotations"] if a["category_id"] in keep]
        removed += len(record["annotations"]) - len(anns)
        for a in anns:
            a["category_id"] = id_map[a["category_id"]]
        record["annotations"] = anns
        if anns or not drop_empty:
            out.append(record)
    return {"dicts": out, "removed": removed}
