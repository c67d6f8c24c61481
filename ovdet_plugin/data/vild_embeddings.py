"""ViLD-image inputs: precomputed proposals with CLIP embeddings of their crops (methods §1.4-1.5).

On disk (written by ``tools/precompute_vild_embeddings.py``)::

    <dir>/index.json        {"format": 1, "embed_dim": D, "shards": {"shard-00000.pt": [ids]}}
    <dir>/shard-00000.pt    {str(image_id): {"boxes": (M, 4) float32 XYXY in original pixels,
                                             "embeds": (M, D) float16, L2-normalised}}

Shards and the index are written atomically, shard first, so an interrupted run loses at most the
shard in progress and a later run resumes after the last indexed image. Reading uses
``torch.load(mmap=True)``, so a worker touches only the images it needs.

Many processes (the tool under Detectron2's ``launch``) write one *part* each: process ``r``
writes ``shard-rank<r>-*.pt`` and its own index ``index.rank<r>.json``; at the end the main
process merges the parts into ``index.json`` (:func:`merge_index_parts`). Readers, and the
resume check, take the union of ``index.json`` and every part index, so a run killed before the
merge, or resumed with another number of processes, loses nothing. An index may also list
``"failed": {image_id: reason}``: images the tool skipped (unreadable, no proposals).

The index also records the dataset it was computed for: ``"dataset": {"name", "num_images",
"files_sha256"}`` (a digest of the image ids and file base names) and ``"files": {image_id:
file base name}``. A writer refuses to resume a folder of another dataset; the trainer
(:meth:`ViLDEmbeddingStore.check_dataset`) and the store's ``get`` refuse image ids whose file is
another one in the training dataset (embeddings of another dataset's image under the same id)
and training images without embeddings, before training starts. An index written before this
record existed cannot be checked: it is used with a warning that says how to add the record.
"""

import hashlib
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

from ..utils.atomic_io import atomic_write_path

__all__ = [
    "ViLDEmbeddingStore",
    "ViLDEmbeddingWriter",
    "dataset_record",
    "merge_index_parts",
    "read_merged_index",
]

logger = logging.getLogger(__name__)

_FORMAT = 1
INDEX = "index.json"
_PRECOMPUTE_FIX = (
    "Re-run tools/precompute_vild_embeddings.py --dataset <the training dataset> with a new "
    "--output folder, and set MODEL.OVD.VILD.EMBEDDINGS_DIR to it."
)


def _base(file_name) -> str:
    return os.path.basename(str(file_name))


def dataset_record(name: str, dataset_dicts: Iterable[dict]) -> dict:
    """``{"name", "num_images", "files_sha256"}`` of a dataset: the digest covers every
    (image id, file base name) pair, so another dataset (or the same name regenerated with
    other images) gets another record."""
    pairs = sorted((str(d["image_id"]), _base(d["file_name"])) for d in dataset_dicts)
    digest = hashlib.sha256("\n".join(f"{i}\t{f}" for i, f in pairs).encode()).hexdigest()
    return {"name": str(name), "num_images": len(pairs), "files_sha256": digest}


def _describe(record: Optional[dict]) -> str:
    if not record:
        return "an unrecorded dataset"
    return f"dataset {record['name']!r} ({record['num_images']} images)"


def _read_index(directory: str, name: str = INDEX) -> dict:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No ViLD embedding index at {path}. Write it with tools/precompute_vild_embeddings.py "
            "(MODEL.OVD.VILD.EMBEDDINGS_DIR points to that tool's --output folder)."
        )
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    if index.get("format") != _FORMAT:
        raise ValueError(f"{path}: unsupported format {index.get('format')!r} (expected {_FORMAT})")
    return index


def _index_files(directory: str) -> List[str]:
    """``index.json`` (if present) and the part indexes ``index.<part>.json``, sorted."""
    if not os.path.isdir(directory):
        return []
    names = [n for n in os.listdir(directory) if n.startswith("index.") and n.endswith(".json")]
    return sorted(names, key=lambda n: (n != INDEX, n))


def read_merged_index(directory: str) -> dict:
    """The union of ``index.json`` and every part index of ``directory``:
    ``{"format", "embed_dim", "shards": {name: [ids]}, "failed": {id: reason}}``. An image
    encoded in a later run is no longer reported as failed. Raises ``FileNotFoundError`` when
    there is no index at all and ``ValueError`` when the parts disagree on the width."""
    names = _index_files(directory)
    if not names:
        return _read_index(directory)  # raises the error that names the tool
    merged = {"format": _FORMAT, "embed_dim": None, "shards": {}, "failed": {}}
    merged.update(dataset=None, files={})
    for name in names:
        index = _read_index(directory, name)
        if merged["embed_dim"] not in (None, int(index["embed_dim"])):
            raise ValueError(
                f"{directory}: {name} holds {index['embed_dim']}-d embeddings, other index files "
                f"{merged['embed_dim']}-d ones; use one --output folder per CLIP model."
            )
        record = index.get("dataset")
        if record and merged["dataset"] and record != merged["dataset"]:
            raise ValueError(
                f"{directory}: {name} was computed for {_describe(record)}, other index files "
                f"for {_describe(merged['dataset'])}; use one --output folder per dataset."
            )
        merged["embed_dim"] = int(index["embed_dim"])
        merged["dataset"] = merged["dataset"] or record
        merged["shards"].update(index["shards"])
        merged["failed"].update(index.get("failed", {}))
        merged["files"].update(index.get("files", {}))
    done = {i for ids in merged["shards"].values() for i in ids}
    merged["failed"] = {i: r for i, r in merged["failed"].items() if i not in done}
    return merged


def _write_json(path: str, obj) -> None:
    with atomic_write_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def merge_index_parts(directory: str) -> dict:
    """Write the union of all index files as ``index.json`` (atomically), then remove the part
    indexes; returns the merged index. Run it in one process after every writer flushed."""
    merged = read_merged_index(directory)
    _write_json(os.path.join(directory, INDEX), merged)
    for name in _index_files(directory):
        if name != INDEX:
            os.remove(os.path.join(directory, name))
    return merged


class ViLDEmbeddingStore:
    """Random access to precomputed proposals + embeddings by image id."""

    def __init__(self, directory: str, max_open_shards: int = 4):
        self.directory = directory
        index = read_merged_index(directory)
        self.embed_dim = int(index["embed_dim"])
        self._failed = index["failed"]
        self._shard_of = {
            str(image_id): shard for shard, ids in index["shards"].items() for image_id in ids
        }
        self._open: "OrderedDict[str, dict]" = OrderedDict()
        self._max_open = max_open_shards
        # the dataset the tool computed the embeddings for, and each image id's file base name
        # (both None / empty for an index written before they were recorded)
        self.dataset: Optional[dict] = index.get("dataset")
        self._files: Dict[str, str] = index.get("files") or {}

    def check_dataset(self, dataset_dicts: Iterable[dict], dataset_names=()) -> None:
        """Refuse (``ValueError``) training images whose id is stored for another file (the
        embeddings were computed for another dataset) and training images that have no
        embeddings at all; run before training starts. An index without a dataset record (an
        older tool) cannot be checked: a warning says so and how to add the record."""
        names = ", ".join(repr(str(n)) for n in dataset_names) or "(not named)"
        if not self.dataset:
            logger.warning(
                "ViLD embeddings in %s do not record the dataset they were computed for (written "
                "by an older tools/precompute_vild_embeddings.py), so they cannot be checked "
                "against the training dataset(s) %s: images of another dataset with the same ids "
                "would get wrong distillation targets. %s",
                self.directory,
                names,
                _PRECOMPUTE_FIX,
            )
            return
        other, missing, total = [], [], 0
        for d in dataset_dicts:
            total += 1
            key = str(d["image_id"])
            stored = self._files.get(key)
            if stored is not None and stored != _base(d["file_name"]):
                other.append((key, stored, _base(d["file_name"])))
            elif key not in self._shard_of and key not in self._failed:
                missing.append(key)
        computed_for = f"were computed for {_describe(self.dataset)}"
        if other:
            key, stored, here = other[0]
            raise ValueError(
                f"ViLD embeddings in {self.directory} {computed_for}, not for the training "
                f"dataset(s) {names}: {len(other)} of its {total} image ids are other files there "
                f"(e.g. image_id {key}: {stored!r} there, {here!r} here), so their proposals and "
                f"embeddings belong to other images. {_PRECOMPUTE_FIX}"
            )
        if missing:
            raise ValueError(
                f"ViLD embeddings in {self.directory} {computed_for}, but {len(missing)} of the "
                f"{total} images of the training dataset(s) {names} have none (e.g. image_id "
                f"{missing[0]}). If it is the same dataset, re-run "
                "tools/precompute_vild_embeddings.py with the same --output (it resumes); "
                f"otherwise: {_PRECOMPUTE_FIX}"
            )

    def skip_reason(self, image_id) -> Optional[str]:
        """Why the precompute tool skipped ``image_id`` (e.g. "ValueError: no proposals"), or
        None if it was not skipped."""
        return self._failed.get(str(image_id))

    def __contains__(self, image_id) -> bool:
        return str(image_id) in self._shard_of

    def __len__(self) -> int:
        return len(self._shard_of)

    def _shard(self, name: str) -> dict:
        if name not in self._open:
            path = os.path.join(self.directory, name)
            self._open[name] = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)
        self._open.move_to_end(name)
        return self._open[name]

    def get(self, image_id, file_name: Optional[str] = None) -> Tuple[np.ndarray, torch.Tensor]:
        """(M, 4) float32 XYXY boxes in original image pixels, (M, D) float32 embeddings.
        With ``file_name``, refuse (``ValueError``) an id stored for another file."""
        key = str(image_id)
        stored = self._files.get(key)
        if file_name is not None and stored is not None and stored != _base(file_name):
            raise ValueError(
                f"ViLD embeddings in {self.directory} were computed for "
                f"{_describe(self.dataset)}, where image_id {image_id} is {stored!r}, not "
                f"{_base(file_name)!r}: they belong to another image. {_PRECOMPUTE_FIX}"
            )
        if key in self._failed:
            raise KeyError(
                f"Image {image_id} has no ViLD embeddings in {self.directory}: "
                f"tools/precompute_vild_embeddings.py skipped it ({self._failed[key]}). Fix the "
                "image (or give it proposals) and re-run the tool, or remove it from the dataset."
            )
        if key not in self._shard_of:
            raise KeyError(
                f"Image {image_id} has no precomputed ViLD embeddings in {self.directory}; "
                "re-run tools/precompute_vild_embeddings.py on this dataset (it resumes)."
            )
        entry = self._shard(self._shard_of[key])[key]
        return entry["boxes"].float().numpy(), entry["embeds"].float()


class ViLDEmbeddingWriter:
    """Collects per-image results and writes them shard by shard (resumable).

    Args:
        directory: the output folder.
        embed_dim: D, checked against what the folder already holds.
        shard_size: images per shard file.
        part: ``None`` writes ``index.json`` itself (one process); a name such as ``"rank0"``
            writes ``index.rank0.json`` and ``shard-rank0-*.pt`` (one writer per process; merge
            with :func:`merge_index_parts`).
        dataset: :func:`dataset_record` of the dataset encoded, recorded in the index and
            checked against what the folder already holds.
    """

    def __init__(
        self,
        directory: str,
        embed_dim: int,
        shard_size: int = 500,
        part: Optional[str] = None,
        dataset: Optional[dict] = None,
    ):
        self.directory = directory
        self.shard_size = shard_size
        self.part = part
        self._index_name = INDEX if part is None else f"index.{part}.json"
        self._shard_prefix = "shard-" if part is None else f"shard-{part}-"
        os.makedirs(directory, exist_ok=True)
        self._done = set()
        if _index_files(directory):
            existing = read_merged_index(directory)
            if int(existing["embed_dim"]) != embed_dim:
                raise ValueError(
                    f"{directory} holds {existing['embed_dim']}-d embeddings, this run makes "
                    f"{embed_dim}-d ones: use another --output folder."
                )
            if dataset and existing["dataset"] and existing["dataset"] != dataset:
                raise ValueError(
                    f"{directory} holds embeddings of {_describe(existing['dataset'])}, this run "
                    f"encodes {_describe(dataset)}: use another --output folder (one per dataset)."
                )
            self._done = {i for ids in existing["shards"].values() for i in ids}
        own = os.path.join(directory, self._index_name)
        if os.path.isfile(own):
            self.index = _read_index(directory, self._index_name)
        else:
            self.index = {"format": _FORMAT, "embed_dim": embed_dim, "shards": {}}
        self.index.setdefault("failed", {})
        self.index.setdefault("files", {})
        if dataset:
            self.index["dataset"] = dataset
        self._pending: Dict[str, dict] = {}

    def done_ids(self) -> set:
        """Image ids (strings) already encoded in this folder, by any process or run."""
        return self._done | {i for ids in self.index["shards"].values() for i in ids}

    def add(
        self, image_id, boxes: torch.Tensor, embeds: torch.Tensor, file_name: Optional[str] = None
    ) -> None:
        """boxes (M, 4) XYXY original pixels; embeds (M, D) L2-normalised; ``file_name``: the
        image's file (its base name is recorded, so a reader can tell another image apart)."""
        if file_name is not None:
            self.index["files"][str(image_id)] = _base(file_name)
        self._pending[str(image_id)] = {
            "boxes": boxes.detach().float().cpu().contiguous(),
            "embeds": embeds.detach().half().cpu().contiguous(),
        }
        self.index["failed"].pop(str(image_id), None)
        if len(self._pending) >= self.shard_size:
            self.flush()

    def add_failure(self, image_id, reason: str) -> None:
        """Record that ``image_id`` was skipped (written with the next flush)."""
        self.index["failed"][str(image_id)] = reason

    def _next_shard_name(self) -> str:
        k = len(self.index["shards"])
        while os.path.exists(os.path.join(self.directory, f"{self._shard_prefix}{k:05d}.pt")):
            k += 1  # never overwrite a shard another index (e.g. a merged one) refers to
        return f"{self._shard_prefix}{k:05d}.pt"

    def flush(self) -> None:
        """Write the pending images as a new shard, then this writer's index (both atomic)."""
        if self._pending:
            name = self._next_shard_name()
            with atomic_write_path(os.path.join(self.directory, name)) as tmp:
                torch.save(self._pending, tmp)
            self.index["shards"][name] = list(self._pending)
            self._pending = {}
        if self.index["shards"] or self.index["failed"]:
            _write_json(os.path.join(self.directory, self._index_name), self.index)


def iter_missing(dataset_dicts: Iterable[dict], done: set) -> List[dict]:
    """The dataset dicts whose image id is not in ``done``."""
    return [d for d in dataset_dicts if str(d["image_id"]) not in done]
