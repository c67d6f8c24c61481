"""Image-caption data for RO-ViT pretraining: CSV / JSONL lists and webdataset tar shards.

:class:`CaptionDataset` is a torch ``IterableDataset`` that

- reads an image-caption list (``.csv`` with a header, or ``.jsonl``; image key one of
  ``path``/``filepath``/``image``/``file_name``, caption key one of ``caption``/``text``/
  ``title``) or tar shards in the webdataset layout (``<key>.jpg|jpeg|png|webp|bmp`` next to
  ``<key>.txt`` or ``<key>.json`` with a "caption"/"text" field; read with Python's ``tarfile``,
  streaming, no extra dependency);
- splits the work across DDP ranks (``detectron2.utils.comm``) and DataLoader workers: global
  worker ``g = rank * num_workers + worker`` of ``n`` takes every n-th shard (when there are at
  least n shards) or else every n-th sample, so one epoch is covered exactly once;
- skips an unreadable image or a sample without image/caption, counts it (``num_skipped``,
  carried in each sample) and logs it;
- repeats epochs (reshuffled with ``seed + epoch``) when ``infinite``, and can start at a batch
  offset (``set_start``) so that a resumed run sees the batches an uninterrupted run would.
"""

import csv
import glob
import io
import json
import logging
import os
import re
import tarfile
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from detectron2.utils import comm
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from ..clip.constants import CLIP_MEAN, CLIP_STD

__all__ = [
    "CaptionDataset",
    "clip_image_transform",
    "collate_captions",
    "expand_shards",
    "load_caption_list",
]

logger = logging.getLogger(__name__)

_IMAGE_KEYS = ("path", "filepath", "image", "file_name", "image_path")
_CAPTION_KEYS = ("caption", "text", "title")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


def _pick(record: Dict, keys: Sequence[str], what: str, where: str) -> str:
    for k in keys:
        if k in record and record[k] not in (None, ""):
            return str(record[k])
    found = sorted(str(k) for k in record if k is not None)  # csv puts extra fields under None
    hint = ""
    if len(found) == 1 and any(d in found[0] for d in ";\t|"):
        hint = (
            " The header looks like one column holding another delimiter: write the CSV with "
            "commas (or tabs in a .tsv file)."
        )
    raise ValueError(
        f"{where}: no {what} column/key; expected one of {list(keys)}, found {found}.{hint}"
    )


def _read_jsonl(path: str) -> List[Dict]:
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{path}, line {n}: not valid JSON ({e.msg}). Each line must be one object "
                    'like {"path": "img.jpg", "caption": "a cat"}; fix or remove that line.'
                ) from e
            if not isinstance(records[-1], dict):
                raise ValueError(
                    f"{path}, line {n}: expected a JSON object with an image path and a caption, "
                    f"got {type(records[-1]).__name__}; fix or remove that line."
                )
    return records


def load_caption_list(path: str, image_root: str = "") -> List[Tuple[str, str]]:
    """Read (image path, caption) pairs from a ``.csv`` (with header) or ``.jsonl`` file.

    Relative image paths are joined to ``image_root`` ("" = the list file's folder).

    Raises:
        FileNotFoundError: the list does not exist.
        ValueError: unknown format, missing columns, or no entries.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Caption list {path!r} not found (MODEL.OVD.ROVIT.CAPTION_FILES); pass an existing "
            ".csv or .jsonl file."
        )
    root = image_root or os.path.dirname(os.path.abspath(path))
    records: List[Dict] = []
    if path.endswith(".csv") or path.endswith(".tsv"):
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.DictReader(f, delimiter="\t" if path.endswith(".tsv") else ","))
    elif path.endswith(".jsonl") or path.endswith(".json"):
        records = _read_jsonl(path)
    else:
        raise ValueError(
            f"Caption list {path!r}: unknown format; use .csv/.tsv (with a header) or .jsonl."
        )
    out, blank = [], 0
    for i, r in enumerate(records):
        where = f"{path}, entry {i}"
        img = _pick(r, _IMAGE_KEYS, "image path", where)
        caption = _pick(r, _CAPTION_KEYS, "caption", where)
        if not caption.strip():  # nothing to learn from: never trained on
            blank += 1
            continue
        out.append((img if os.path.isabs(img) else os.path.join(root, img), caption))
    if blank:
        logger.warning(f"{path}: dropped {blank} entries whose caption is empty or whitespace")
    if not out:
        raise ValueError(
            f"Caption list {path!r} has no entries; add 'path,caption' rows (CSV) or "
            '{"path": ..., "caption": ...} lines (JSONL).'
        )
    return out


def expand_shards(spec: str) -> List[str]:
    """Shard paths from ``"a-{000..009}.tar"`` (brace ranges), a glob, or a comma-separated list.

    Raises:
        FileNotFoundError: a spec that names no existing file.
    """
    paths: List[str] = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        m = re.search(r"\{(\d+)\.\.(\d+)\}", part)
        if m:
            lo, hi, width = int(m.group(1)), int(m.group(2)), len(m.group(1))
            names = [
                part[: m.start()] + str(i).zfill(width) + part[m.end() :] for i in range(lo, hi + 1)
            ]
        elif any(c in part for c in "*?["):
            names = sorted(glob.glob(part))
        else:
            names = [part]
        missing = [n for n in names if not os.path.isfile(n)]
        if not names or missing:
            raise FileNotFoundError(
                f"Tar shards {part!r} (MODEL.OVD.ROVIT.SHARDS): missing {missing[:3] or [part]}. "
                "Check the path and the {000..NNN} range."
            )
        paths.extend(names)
    return paths


def clip_image_transform(size: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> (3, size, size) CLIP-normalised tensor: resize the short side (bicubic),
    centre crop (open_clip's eval transform)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def _tar_samples(path: str) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """(key, {extension: bytes}) groups of consecutive tar members sharing a key (webdataset)."""
    key, group = None, {}
    with tarfile.open(path, "r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            base = os.path.basename(member.name)
            if "." not in base or base.startswith("."):
                continue
            dot = base.index(".")
            k = os.path.join(os.path.dirname(member.name), base[:dot])
            ext = base[dot + 1 :].lower()
            f = tar.extractfile(member)
            data = f.read() if f is not None else b""
            if k != key and key is not None:
                yield key, group
                group = {}
            key = k
            group[ext] = data
    if key is not None:
        yield key, group


def _caption_from(group: Dict[str, bytes]) -> Optional[str]:
    if "txt" in group:
        return group["txt"].decode("utf-8").strip()
    if "json" in group:
        meta = json.loads(group["json"].decode("utf-8"))
        for k in _CAPTION_KEYS:
            if meta.get(k):
                return str(meta[k])
    return None


class CaptionDataset(IterableDataset):
    """Stream of ``{"image": (3, S, S) tensor, "caption": str, "num_skipped": int, "worker": g}``.

    See the module docstring for the sharding and resume rules.
    """

    def __init__(
        self,
        *,
        records: Optional[Sequence[Tuple[str, str]]] = None,
        shards: Optional[Sequence[str]] = None,
        transform: Callable[[Image.Image], torch.Tensor],
        seed: int = 0,
        shuffle: bool = True,
        infinite: bool = True,
        rank: Optional[int] = None,
        world_size: Optional[int] = None,
    ):
        """
        Args:
            records: (image path, caption) pairs, e.g. from :func:`load_caption_list`.
            shards: tar shard paths (webdataset layout), e.g. from :func:`expand_shards`.
            transform: PIL image -> tensor.
            seed: shuffling seed (epoch e uses ``seed + e``).
            shuffle: shuffle list entries / shard order per epoch.
            infinite: repeat epochs forever (training); False = one epoch.
            rank, world_size: DDP position (default: ``detectron2.utils.comm``).
        """
        super().__init__()
        if not records and not shards:
            raise ValueError(
                "The caption dataset is empty: set MODEL.OVD.ROVIT.CAPTION_FILES (CSV/JSONL "
                "lists) and/or MODEL.OVD.ROVIT.SHARDS (tar shards) to non-empty sources."
            )
        self.records = list(records or [])
        self.shards = list(shards or [])
        self.transform = transform
        self.seed = int(seed)
        self.shuffle = shuffle
        self.infinite = infinite
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)
        self.num_skipped = 0
        self._start_batch = 0
        self._batch_size = 1

    def set_start(self, start_batch: int, batch_size: int) -> None:
        """Begin at batch ``start_batch`` of this rank's loader (batches of ``batch_size``), as
        an uninterrupted run would after ``start_batch`` iterations (resume)."""
        self._start_batch = int(start_batch)
        self._batch_size = int(batch_size)

    # ---------------------------------------------------------------- iteration
    def _worker(self) -> Tuple[int, int, int, int]:
        """(global worker g, total n, virtual worker v, workers per rank). The DataLoader takes
        batch k from worker k % nw; a loader resumed at batch s takes it from worker
        (k - s) % nw, so worker w plays the part of worker v = (w + s) % nw of the
        uninterrupted run."""
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        v = (wid + self._start_batch) % nw
        return self.rank * nw + v, self.world_size * nw, v, nw

    def _order(self, n: int, epoch: int) -> List[int]:
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(n, generator=g).tolist()

    def _raw_epoch(self, epoch: int, g: int, n: int) -> Iterator[Tuple[str, Callable, str]]:
        """(name, open-image callable, caption-or-None) of this worker's share of one epoch."""
        for i in self._order(len(self.records), epoch)[g::n] if self.records else []:
            path, caption = self.records[i]
            yield path, (lambda p=path: Image.open(p)), caption
        if not self.shards:
            return
        order = [self.shards[i] for i in self._order(len(self.shards), epoch)]
        by_shard = len(order) >= n
        count = 0
        for shard in order[g::n] if by_shard else order:
            try:
                for key, group in _tar_samples(shard):
                    mine = by_shard or count % n == g
                    count += 1
                    if not mine:
                        continue
                    ext = next((e for e in _IMAGE_EXTS if e in group), None)
                    data = group.get(ext) if ext else None
                    yield (
                        f"{shard}:{key}",
                        (lambda d=data: Image.open(io.BytesIO(d)) if d else None),
                        _caption_from(group),
                    )
            except (tarfile.TarError, OSError, EOFError) as e:
                self._skip(f"{shard} (rest of the shard)", e)

    def _skip(self, name: str, error) -> None:
        self.num_skipped += 1
        logger.warning(
            "Skipped unreadable sample %s (%s: %s); %d skipped so far by this data worker.",
            name,
            type(error).__name__ if isinstance(error, Exception) else "missing",
            error,
            self.num_skipped,
        )

    def __iter__(self) -> Iterator[Dict]:
        g, n, v, nw = self._worker()
        # batches 0..start-1 of this rank came round-robin from (virtual) workers 0..nw-1
        skip = max(0, (self._start_batch - v + nw - 1) // nw) * self._batch_size
        epoch = 0
        while True:
            produced = 0
            for name, open_image, caption in self._raw_epoch(epoch, g, n):
                try:
                    if caption is None:
                        raise ValueError("no caption (.txt/.json) in the sample")
                    img = open_image()
                    if img is None:
                        raise ValueError("no image member in the sample")
                    img = img.convert("RGB")
                except Exception as e:  # unreadable / truncated / missing image or caption
                    self._skip(name, e)
                    continue
                produced += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield {
                    "image": self.transform(img),
                    "caption": caption,
                    "num_skipped": self.num_skipped,
                    "worker": g,
                }
            epoch += 1
            if not self.infinite:
                return
            if produced == 0:
                raise RuntimeError(
                    f"Data worker {g} of {n} got no readable sample in a whole epoch; check the "
                    "caption files / shards (fewer samples than workers x ranks?)."
                )


def collate_captions(samples: List[Dict]) -> Dict:
    """Batch: {"images": (B, 3, S, S), "captions": [B str], "num_skipped": {worker: count}}."""
    return {
        "images": torch.stack([s["image"] for s in samples]),
        "captions": [s["caption"] for s in samples],
        "num_skipped": {s["worker"]: s["num_skipped"] for s in samples},
    }
