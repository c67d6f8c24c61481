"""Vocabularies: the class names a detector knows, with synonyms and base/novel flags.

A vocabulary travels with everything that depends on it (text classifier, fusion rules,
evaluation), so base/novel membership is always read from here, never guessed from a class count
or a dataset name.

Built-in vocabularies need no download:
- ``"lvis"``: LVIS v1 (1203 classes) from Detectron2's own metadata
  (``detectron2.data.datasets.lvis_v1_categories``): names, synonyms and frequency f/c/r.
  Base = frequent + common (866), novel = rare (337) (methods (protocols)).
- ``"coco"``: the 80 COCO classes with the OV-COCO split flags (48 base, 17 novel, 15 unused),
  the split of Bansal et al. / OVR-CNN used by ViLD, F-VLM and CLIPSelf.
- ``"coco_ov"``: the 65 classes of that split, in COCO order.

``"dataset:NAME"``: the classes and flags of a dataset registered through ``ovdet_plugin.data``,
read from Detectron2's catalogs (this module imports nothing from ``ovdet_plugin.data``, which
imports it).

Custom vocabularies: a comma-separated string (``"cat, remote control, sofa"``), a ``.txt`` file
(one class per line; ``|`` separates synonyms: ``sofa | couch``; ``#`` starts a comment) or a
``.json`` file holding LVIS/COCO-style ``categories`` (``frequency`` "r" marks novel classes; an
explicit ``"split": "base"|"novel"`` field wins). Custom classes are novel unless marked base.
"""

import json
import os
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from .clip.prompts import normalize_class_name

__all__ = [
    "Vocabulary",
    "get_dataset_vocabulary",
    "load_vocabulary",
    "COCO_OV_BASE",
    "COCO_OV_NOVEL",
]

BASE, NOVEL, UNUSED = "base", "novel", "unused"

# OV-COCO split (Bansal et al. 2018, as used by OVR-CNN / ViLD / F-VLM / CLIPSelf), COCO names.
COCO_OV_NOVEL = (
    "airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
    "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors",
)  # fmt: skip
COCO_OV_BASE = (
    "person", "bicycle", "car", "motorcycle", "train", "truck", "boat", "bench", "bird", "horse",
    "sheep", "bear", "zebra", "giraffe", "backpack", "handbag", "suitcase", "frisbee", "skis",
    "kite", "surfboard", "bottle", "fork", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "pizza", "donut", "chair", "bed", "toilet", "tv", "laptop",
    "mouse", "remote", "microwave", "oven", "toaster", "refrigerator", "book", "clock", "vase",
    "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class Vocabulary:
    """An ordered list of classes. Index ``i`` is Detectron2's contiguous class id ``i``.

    Attributes:
        names: K display names (as given, e.g. "remote_control").
        synonyms: K tuples of alternative names (the first is the name itself).
        splits: K entries of "base", "novel" or "unused" (unused: not part of an OV split).
        frequency: K LVIS frequency letters "f"/"c"/"r", or "" where unknown.
        source: where the vocabulary came from (for messages and cache keys).
    """

    names: Tuple[str, ...]
    synonyms: Tuple[Tuple[str, ...], ...]
    splits: Tuple[str, ...]
    frequency: Tuple[str, ...]
    source: str = "custom"

    def __post_init__(self):
        k = len(self.names)
        if k == 0:
            raise ValueError(
                f"Empty vocabulary (from {self.source!r}): give at least one class name, e.g. "
                "MODEL.OVD.TEST_VOCABULARY 'cat, dog'"
            )
        for field in ("synonyms", "splits", "frequency"):
            if len(getattr(self, field)) != k:
                raise ValueError(f"Vocabulary.{field} has {len(getattr(self, field))} entries, "
                                 f"names has {k}")  # fmt: skip
        bad_splits = sorted(set(self.splits) - {BASE, NOVEL, UNUSED})
        if bad_splits:
            raise ValueError(f"Unknown split flags {bad_splits}; use 'base', 'novel' or 'unused'")
        empty = [n for n in self.names if not normalize_class_name(n)]
        if empty:
            raise ValueError(
                f"Class names that normalise to nothing (from {self.source!r}): {empty}. "
                "Every class needs a name with at least one letter or digit."
            )
        normalized = [normalize_class_name(n) for n in self.names]
        seen, dups = set(), []
        for original, norm in zip(self.names, normalized):
            if norm in seen and original not in dups:
                dups.append(original)
            seen.add(norm)
        if dups:
            raise ValueError(
                f"Duplicate class names in vocabulary {self.source!r} (after normalisation: "
                f"lower case, '_' -> ' '): {dups}. Remove the repeats or merge them as synonyms "
                "('sofa | couch' in a .txt file)."
            )

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_names(
        cls,
        names: Sequence[str],
        *,
        base: Iterable[str] = (),
        synonyms: Optional[Sequence[Sequence[str]]] = None,
        source: str = "custom",
    ) -> "Vocabulary":
        """A custom vocabulary: every class is novel except those listed in ``base``."""
        names = tuple(str(n).strip() for n in names)
        base = {normalize_class_name(b) for b in base}
        unknown = sorted(base - {normalize_class_name(n) for n in names})
        if unknown:
            raise ValueError(f"Base classes not in the vocabulary {source!r}: {unknown}")
        syns = (
            tuple((n,) for n in names)
            if synonyms is None
            else tuple(_with_name_first(n, s) for n, s in zip(names, synonyms))
        )
        splits = tuple(BASE if normalize_class_name(n) in base else NOVEL for n in names)
        return cls(names, syns, splits, ("",) * len(names), source)

    # ---- queries ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.names)

    @property
    def normalized_names(self) -> List[str]:
        return [normalize_class_name(n) for n in self.names]

    @property
    def base_mask(self) -> List[bool]:
        return [s == BASE for s in self.splits]

    @property
    def novel_mask(self) -> List[bool]:
        return [s == NOVEL for s in self.splits]

    def subset(self, keep: Sequence[bool], source: Optional[str] = None) -> "Vocabulary":
        """The classes where ``keep`` is true, in order."""
        idx = [i for i, k in enumerate(keep) if k]
        pick = lambda seq: tuple(seq[i] for i in idx)  # noqa: E731
        return Vocabulary(
            pick(self.names),
            pick(self.synonyms),
            pick(self.splits),
            pick(self.frequency),
            source or f"{self.source}[subset]",
        )


def _with_name_first(name: str, synonyms: Sequence[str]) -> Tuple[str, ...]:
    rest = [s for s in synonyms if normalize_class_name(s) != normalize_class_name(name)]
    return (name, *rest)


# ---- built-ins ------------------------------------------------------------------------------
def lvis_vocabulary() -> Vocabulary:
    """LVIS v1, 1203 classes in category-id order (contiguous id = category id - 1)."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    cats = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
    return Vocabulary(
        names=tuple(c["name"] for c in cats),
        synonyms=tuple(_with_name_first(c["name"], c["synonyms"]) for c in cats),
        splits=tuple(NOVEL if c["frequency"] == "r" else BASE for c in cats),
        frequency=tuple(c["frequency"] for c in cats),
        source="lvis",
    )


def coco_vocabulary(ov_only: bool = False) -> Vocabulary:
    """COCO's 80 thing classes (Detectron2's metadata order) with OV-COCO flags."""
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    names = [c["name"] for c in COCO_CATEGORIES if c["isthing"]]
    base, novel = set(COCO_OV_BASE), set(COCO_OV_NOVEL)
    splits = [BASE if n in base else NOVEL if n in novel else UNUSED for n in names]
    vocab = Vocabulary(
        tuple(names), tuple((n,) for n in names), tuple(splits), ("",) * len(names), "coco"
    )
    if ov_only:
        return vocab.subset([s != UNUSED for s in splits], source="coco_ov")
    return vocab


BUILTIN_VOCABULARIES = {
    "lvis": lvis_vocabulary,
    "coco": coco_vocabulary,
    "coco_ov": lambda: coco_vocabulary(ov_only=True),
}


# ---- files and strings ------------------------------------------------------------------------
def _from_txt(path: str) -> Vocabulary:
    names, synonyms = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = [p.strip() for p in line.split("|") if p.strip()]
            names.append(parts[0])
            synonyms.append(parts)
    return Vocabulary.from_names(names, synonyms=synonyms, source=path)


def _from_json(path: str) -> Vocabulary:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Vocabulary file {path} is not valid JSON ({e})") from e
    cats = data.get("categories", data) if isinstance(data, dict) else data
    if not isinstance(cats, list) or not all(isinstance(c, dict) and "name" in c for c in cats):
        raise ValueError(
            f"Vocabulary file {path}: expected a list of categories with a 'name' each, or a "
            "dataset JSON (LVIS/COCO format) with a 'categories' list"
        )
    cats = sorted(cats, key=lambda c: c.get("id", 0))
    splits = []
    for c in cats:
        if "split" in c:
            splits.append(c["split"])
        else:
            splits.append(
                NOVEL if c.get("frequency") == "r" else BASE if "frequency" in c else NOVEL
            )
    return Vocabulary(
        names=tuple(c["name"] for c in cats),
        synonyms=tuple(_with_name_first(c["name"], c.get("synonyms", [])) for c in cats),
        splits=tuple(splits),
        frequency=tuple(c.get("frequency", "") for c in cats),
        source=path,
    )


def _refuse_misnamed_builtin(key: str) -> None:
    """A one-name spec that looks like a built-in vocabulary or a dataset name ("lvis_v1",
    "COCO-OV", "lvis_v1_val") is almost surely not a one-class vocabulary: raise with the fix."""
    import difflib

    from detectron2.data import DatasetCatalog

    low = key.lower().replace("-", "_")
    close = difflib.get_close_matches(low, list(BUILTIN_VOCABULARIES), n=1, cutoff=0.8)
    prefix = [
        b
        for b in BUILTIN_VOCABULARIES
        if low.startswith(b) and low[len(b) : len(b) + 1] in "_0123456789"
    ]
    if key in DatasetCatalog.list():
        hint = f"the classes of the registered dataset: 'dataset:{key}'"
    elif close or prefix:
        hint = f"the built-in vocabulary: {(close or prefix)[0]!r}"
    else:
        return
    raise ValueError(
        f"Vocabulary {key!r} would be a vocabulary of one class named {key!r}. Did you mean "
        f"{hint}? For a real one-class vocabulary, put the name in a .txt file."
    )


def get_dataset_vocabulary(dataset_name: str) -> Vocabulary:
    """The :class:`Vocabulary` of a dataset registered by this plugin (names, synonyms where
    known, base/novel flags, frequency), read from its metadata.

    For datasets whose metadata comes from their JSON file (LVIS-format registrations), the
    metadata is filled when the JSON exists; otherwise this loads the dataset first.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    meta = MetadataCatalog.get(dataset_name)
    if not hasattr(meta, "thing_class_splits"):
        DatasetCatalog.get(dataset_name)  # fills lazily-set metadata (or raises FileNotFoundError)
        from detectron2.data import DatasetCatalog, MetadataCatalog

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


def load_vocabulary(spec) -> Vocabulary:
    """Turn a vocabulary spec into a :class:`Vocabulary`.

    Args:
        spec: a :class:`Vocabulary` (returned as is), a built-in name ("lvis", "coco",
            "coco_ov"), "dataset:NAME" (the classes and base/novel flags of a dataset registered
            through ``ovdet_plugin.data``), a path to a .txt/.json file, a comma-separated string
            of class names, or a list of names.
    """
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, (list, tuple)):
        return Vocabulary.from_names(spec)
    if not isinstance(spec, str):
        raise TypeError(f"A vocabulary spec must be a string or a list of names, got {type(spec)}")
    key = spec.strip()
    if key.startswith("dataset:"):  # the classes and flags of a registered dataset
        return get_dataset_vocabulary(key[len("dataset:") :].strip())
    if key.lower() in BUILTIN_VOCABULARIES:
        return BUILTIN_VOCABULARIES[key.lower()]()
    looks_like_file = key.endswith((".txt", ".json")) or os.sep in key
    if looks_like_file:
        if not os.path.isfile(key):
            raise FileNotFoundError(
                f"Vocabulary file {key!r} does not exist. Give a built-in name "
                f"({sorted(BUILTIN_VOCABULARIES)}), an existing .txt/.json file, or a "
                "comma-separated list of names."
            )
        return _from_json(key) if key.endswith(".json") else _from_txt(key)
    if "," not in key:
        _refuse_misnamed_builtin(key)
    names = [n.strip() for n in key.split(",")]
    if not any(names):
        names = []
    empty = [i for i, n in enumerate(names) if not n]
    if names and empty:
        raise ValueError(
            f"Vocabulary string {spec!r} has empty entries at positions {empty} "
            "(two commas in a row, or a trailing comma)"
        )
    return Vocabulary.from_names(names, source="custom")
