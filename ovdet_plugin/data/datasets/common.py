"""Shared helpers of the dataset registrations: the data root, file checks, OV metadata."""

import json
import logging
import math
import os
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog

from ...vocabulary import BASE, Vocabulary, get_dataset_vocabulary  # noqa: F401 (re-export)

__all__ = [
    "datasets_root",
    "require_file",
    "ov_metadata",
    "get_dataset_vocabulary",
    "register_or_replace",
    "read_json_file",
    "require_unique_ids",
    "box_problem",
    "log_dropped",
    "load_coco_dicts",
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


def read_json_file(path: str) -> dict:
    """``json.load`` of ``path``; a truncated or malformed file raises ``ValueError`` naming the
    file, the line and the fix (instead of a bare ``JSONDecodeError``)."""
    from detectron2.utils.file_io import PathManager

    try:
        with PathManager.open(path, "r") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the file is "
            "truncated or corrupt. Download or regenerate it."
        ) from e


def require_unique_ids(items: Iterable[dict], what: str, path: str) -> None:
    """Raise ``ValueError`` when two ``items`` share an ``"id"``: annotations would be attached to
    the wrong image or trained under the wrong class."""
    counts = Counter(item.get("id") for item in items)
    dup = sorted((i for i, n in counts.items() if n > 1), key=str)
    if dup:
        raise ValueError(
            f"{path}: {len(dup)} {what} id(s) appear more than once (e.g. {dup[:5]}); boxes would "
            f"be trained under the wrong {'class' if what == 'category' else what}. Give every "
            f"{what} a unique id in the file."
        )


def box_problem(bbox, width: Optional[float] = None, height: Optional[float] = None) -> str:
    """Why an XYWH ``bbox`` cannot be trained on ("" when it can): "no bbox", "not 4 numbers",
    "NaN or infinite", "zero or negative size", "outside the image"."""
    if bbox is None:
        return "no bbox"
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "not 4 numbers"
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return "NaN or infinite"
    if w <= 0 or h <= 0:
        return "zero or negative size"
    if width and height and (x >= width or y >= height or x + w <= 0 or y + h <= 0):
        return "outside the image"
    return ""


OTHER_CLASS = "of another class"


def count_drop(ann: Dict, keep, width: float, height: float, dropped: Counter) -> bool:
    """True when a raw annotation is not trained on; its reason is counted in ``dropped``:
    :data:`OTHER_CLASS` (its category is not in ``keep``; callers ``pop`` it, since that is a
    split, not a problem) or a box problem as it is logged ("without bbox", "with a bbox ...")."""
    if ann["category_id"] not in keep:
        dropped[OTHER_CLASS] += 1
        return True
    problem = box_problem(ann.get("bbox"), width, height)
    if problem:
        dropped["without bbox" if problem == "no bbox" else f"with a bbox {problem}"] += 1
    return bool(problem)


def log_dropped(dropped: Counter, where: str) -> None:
    """Log what a loader dropped, counted by reason (a warning when anything was dropped)."""
    if dropped:
        reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
        logger.warning(f"{where}: dropped {sum(dropped.values())} annotation(s): {reasons}")


def load_coco_dicts(json_file: str, image_root: str, fix: str) -> List[Dict]:
    """Detectron2's ``load_coco_json`` with the raw category ids (``dataset_name=None``). A
    truncated or malformed JSON raises ``ValueError`` naming the file, the line and ``fix``;
    duplicate image ids are refused (boxes would land on the wrong image)."""
    from detectron2.data.datasets.coco import load_coco_json

    try:
        dicts = load_coco_json(json_file, image_root, dataset_name=None)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{json_file} is not valid JSON (line {e.lineno}: {e.msg}); the file is truncated or "
            f"corrupt. {fix}"
        ) from e
    dup = [i for i, n in Counter(r["image_id"] for r in dicts).items() if n > 1]
    if dup:
        raise ValueError(
            f"{json_file}: {len(dup)} image id(s) appear more than once (e.g. {dup[:5]}); boxes "
            "would be trained on the wrong image. Give every image a unique id in the file."
        )
    return dicts


def map_and_filter_annotations(
    dicts: List[Dict], meta: Dict, base_only: bool, drop_empty: bool, source: str
) -> Dict[str, object]:
    """Map raw category ids of COCO dataset dicts (from :func:`load_coco_dicts`) to contiguous
    ids in place, dropping annotations of classes outside the metadata and, with ``base_only``,
    of non-base classes; annotations whose box cannot be trained on are dropped and counted by
    reason (:func:`box_problem`, logged for ``source``). With ``drop_empty`` images left without
    annotations are dropped. Returns ``{"dicts": kept records, "removed": number of annotations
    of other classes}``. Raises ``ValueError`` when ``base_only`` leaves no image."""
    id_map = meta["thing_dataset_id_to_contiguous_id"]
    splits = meta["thing_class_splits"]
    keep = {d for d, i in id_map.items() if not base_only or splits[i] == BASE}
    out, dropped = [], Counter()
    for record in dicts:
        anns = []
        for a in record["annotations"]:
            if count_drop(a, keep, record["width"], record["height"], dropped):
                continue
            a["category_id"] = id_map[a["category_id"]]
            anns.append(a)
        record["annotations"] = anns
        if anns or not drop_empty:
            out.append(record)
    removed = dropped.pop(OTHER_CLASS, 0)
    log_dropped(dropped, source)
    if base_only and not out:
        raise ValueError(
            f"{source}: no image has an annotation of a base class, so there is nothing to train "
            "on. Check that the file is the right one and that its base/novel split leaves base "
            "classes."
        )
    return {"dicts": out, "removed": removed}
