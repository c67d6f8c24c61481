"""Your own data: COCO-format files with your own base/novel split, and registration of
COCO-format or LVIS-format files from a config key or a command-line flag (no Python code).

COCO format (:func:`register_coco_format_ov_dataset`): the classes are the file's
``categories`` (contiguous id ``i`` = the ``i``-th category sorted by id); the novel classes are
named by ``novel=[...]`` or by a split file; every other class is base (or, with a split file that
also lists ``base``, "unused"). The metadata is that of the built-in OV-COCO splits
(``thing_class_splits``, ``thing_dataset_id_to_contiguous_id``, ...), so the OV-COCO evaluator
(:class:`ovdet_plugin.evaluation.OVCOCOEvaluator`: AP50 novel/base/all) evaluates any such dataset,
and ``MODEL.OVD.TRAIN_VOCABULARY "dataset:NAME"`` reads its classes and flags.

A dataset *spec* is one string of ``key=value`` pairs separated by commas::

    name=my_train,format=coco,json=annotations/train.json,images=images,base_only=true,novel=cat;dog
    name=my_val,format=coco,json=annotations/val.json,images=images,split=my_split.json
    name=my_lvis_train,format=lvis,json=train.json,images=.,base_only=true

keys: ``name`` (any dataset name), ``format`` (``coco`` or ``lvis``), ``json`` (the annotation
file), ``images`` (the folder that the images' ``file_name`` are relative to), optional
``base_only`` (``true``: drop the annotations of non-base classes, for training), and for COCO
format ``novel`` (novel class names separated by ``;``) or ``split`` (a split file). LVIS-format
files carry their split in the categories (``frequency: "r"`` or ``"split": "novel"``). Relative
paths that do not exist as given are taken under ``$DETECTRON2_DATASETS``.

Specs come from ``MODEL.OVD.CUSTOM_DATASETS`` (a list in the YAML) and from the tools'
``--register-dataset SPEC`` flag (see :func:`add_dataset_arguments`). ``setup_ovdet_cfg`` applies
them in every ``launch`` worker; registering the same spec again replaces the entry (idempotent).
"""

import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

from ...vocabulary import BASE, NOVEL, UNUSED, Vocabulary, normalize_class_name
from .common import (
    datasets_root,
    load_coco_dicts,
    map_and_filter_annotations,
    ov_metadata,
    register_or_replace,
    require_file,
)
from .lvis_format import _set_metadata, register_lvis_format_dataset

__all__ = [
    "register_coco_format_ov_dataset",
    "load_coco_format_ov_json",
    "coco_format_ov_metadata",
    "read_split_file",
    "parse_dataset_spec",
    "register_dataset_spec",
    "register_datasets_from_config",
    "add_dataset_arguments",
    "merge_dataset_arguments",
]

logger = logging.getLogger(__name__)

CUSTOM_COCO_SECTION = "Your own COCO-format dataset"
SPEC_KEYS = ("name", "format", "json", "images", "base_only", "novel", "split")
SPEC_EXAMPLE = (
    "name=my_train,format=coco,json=train.json,images=images,base_only=true,novel=cat;dog"
)


def read_split_file(path: str) -> Dict[str, List[str]]:
    """A base/novel split file: ``.txt`` with one novel class name per line (``#`` comments), or
    ``.json`` ``{"novel": [...], "base": [...]}`` (``base`` optional). Returns
    ``{"novel": [...], "base": [...] or absent}``."""
    require_file(path, "Split file", CUSTOM_COCO_SECTION)
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
        return {"novel": [n for n in lines if n]}
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("novel"), list):
            raise ValueError(
                f"Split file {path} must hold a JSON object with a 'novel' list of class names "
                '(and optionally a \'base\' list), e.g. {"novel": ["cat"], "base": ["dog"]}'
            )
        return {k: [str(n) for n in data[k]] for k in ("novel", "base") if k in data}
    raise ValueError(f"Split file {path!r} must end in .txt (novel names) or .json")


def _coco_categories(json_file: str) -> List[dict]:
    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or "categories" not in data:
        raise ValueError(f"{json_file} is not a COCO-format file: it has no 'categories' list")
    return sorted(data["categories"], key=lambda c: int(c["id"]))


def coco_format_ov_metadata(
    json_file: str, novel: Sequence[str] = (), base: Optional[Sequence[str]] = None
) -> Dict:
    """OV metadata of a COCO-format file (see the module docstring).

    Args:
        json_file: the COCO-format annotation file (its ``categories`` are read).
        novel: the novel class names (matched after normalisation: case, ``_``).
        base: the base class names; None means every class that is not novel. Classes in
            neither list are "unused".

    Returns:
        the metadata entries of :func:`~ovdet_plugin.data.datasets.common.ov_metadata`.
    """
    cats = _coco_categories(json_file)
    names = [str(c["name"]) for c in cats]
    by_norm = {normalize_class_name(n): n for n in names}
    wanted = {"novel": list(novel)} if base is None else {"novel": list(novel), "base": list(base)}
    for group, listed in wanted.items():
        unknown = [n for n in listed if normalize_class_name(n) not in by_norm]
        if unknown:
            raise ValueError(
                f"{group.capitalize()} classes {unknown} are not categories of {json_file} "
                f"(its classes: {names[:20]}{' ...' if len(names) > 20 else ''}). Fix the "
                "spelling in novel=/the split file."
            )
    novel_set = {normalize_class_name(n) for n in novel}
    base_set = None if base is None else {normalize_class_name(n) for n in base}
    both = sorted(novel_set & (base_set or set()))
    if both:
        raise ValueError(f"Classes {both} are listed as both base and novel; list each once")
    splits = []
    for n in names:
        key = normalize_class_name(n)
        if key in novel_set:
            splits.append(NOVEL)
        else:
            splits.append(BASE if base_set is None or key in base_set else UNUSED)
    if NOVEL not in splits:
        logger.warning(f"{json_file}: no novel class given; AP50_novel will be NaN")
    vocab = Vocabulary(
        names=tuple(names),
        synonyms=tuple((n,) for n in names),
        splits=tuple(splits),
        frequency=("",) * len(names),
        source=json_file,
    )
    return ov_metadata(vocab, [int(c["id"]) for c in cats])


def load_coco_format_ov_json(
    json_file: str,
    image_root: str,
    dataset_name: Optional[str] = None,
    *,
    novel: Sequence[str] = (),
    base: Optional[Sequence[str]] = None,
    base_only: bool = False,
) -> List[Dict]:
    """Load a COCO-format file with Detectron2's ``load_coco_json`` into dataset dicts with
    contiguous ``category_id`` (see :func:`coco_format_ov_metadata`). With ``base_only`` the
    annotations of non-base classes are dropped, and so are images left with none (as OV-COCO's
    training split). With ``dataset_name`` its metadata is (re)set."""
    require_file(json_file, "COCO-format annotation file", CUSTOM_COCO_SECTION)
    require_file(image_root, "Image folder", CUSTOM_COCO_SECTION)
    meta = coco_format_ov_metadata(json_file, novel, base)
    if dataset_name is not None:
        _set_metadata(dataset_name, meta)
    dicts = load_coco_dicts(json_file, image_root, f"See README, '{CUSTOM_COCO_SECTION}'.")
    result = map_and_filter_annotations(
        dicts, meta, base_only, drop_empty=base_only, source=dataset_name or json_file
    )
    logger.info(
        f"{dataset_name or json_file}: {len(result['dicts'])} of {len(dicts)} images, "
        f"{len(meta['thing_classes'])} classes ({meta['thing_class_splits'].count(NOVEL)} "
        f"novel); removed {result['removed']} annotations"
        + (" of non-base classes" if base_only else " of classes outside the split")
    )
    return result["dicts"]


def register_coco_format_ov_dataset(
    name: str,
    json_file: str,
    image_root: str,
    *,
    novel: Iterable[str] = (),
    split_file: str = "",
    base_only: bool = False,
) -> None:
    """Register your own COCO-format dataset with a base/novel split under ``name``.

    Args:
        name: any dataset name (an existing registration is replaced).
        json_file: the COCO-format annotation file (``images``, ``annotations``,
            ``categories``; boxes XYWH; polygons or RLE).
        image_root: the folder the images' ``file_name`` are relative to.
        novel: novel class names; every other class is base.
        split_file: instead of ``novel``, a split file (see :func:`read_split_file`).
        base_only: for training: drop non-base annotations and images left without any.

    Evaluation: ``evaluator_type="ov_coco"`` (``OVCOCOEvaluator``: AP50 novel/base/all plus
    the COCO metrics against ``json_file``) when ``base_only`` is false; a ``base_only``
    (training) split gets ``"coco"``, evaluated on the filtered dicts.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    novel = [str(n).strip() for n in novel if str(n).strip()]
    base = None
    if split_file:
        if novel:
            raise ValueError(f"Dataset {name!r}: give novel classes or a split file, not both")
        split = read_split_file(os.fspath(split_file))
        novel, base = split["novel"], split.get("base")
    metadata = dict(image_root=image_root, base_only=base_only)
    if base_only:
        metadata.update(source_json_file=json_file, evaluator_type="coco")
    else:
        metadata.update(json_file=json_file, evaluator_type="ov_coco")
    register_or_replace(
        name,
        lambda: load_coco_format_ov_json(
            json_file, image_root, name, novel=novel, base=base, base_only=base_only
        ),
        metadata,
    )
    if os.path.isfile(json_file):  # class metadata now, so "dataset:NAME" works before loading
        _set_metadata(name, coco_format_ov_metadata(json_file, novel, base))


# ---- specs: registration from the config and the command line ---------------------------------


def _resolve(path: str) -> str:
    """An absolute or existing path as given; else the path under ``$DETECTRON2_DATASETS``."""
    path = os.path.expanduser(path)
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(datasets_root(), path)


def _truthy(value: str, spec: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes"):
        return True
    if v in ("0", "false", "no", ""):
        return False
    raise ValueError(f"base_only={value!r} in dataset spec {spec!r}: use true or false")


def parse_dataset_spec(spec: str) -> Dict[str, object]:
    """Parse one dataset spec (see the module docstring) into
    ``{"name", "format", "json", "images", "base_only", "novel", "split"}``; paths resolved."""
    fields: Dict[str, str] = {}
    for part in [p for p in spec.split(",") if p.strip()]:
        if "=" not in part:
            raise ValueError(
                f"Dataset spec {spec!r}: {part!r} is not key=value. Write it as "
                f"{SPEC_EXAMPLE!r} (keys: {', '.join(SPEC_KEYS)})."
            )
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in SPEC_KEYS:
            raise ValueError(
                f"Dataset spec {spec!r}: unknown key {key!r}; the keys are {', '.join(SPEC_KEYS)}"
            )
        fields[key] = value
    missing = [k for k in ("name", "format", "json", "images") if not fields.get(k)]
    if missing:
        raise ValueError(f"Dataset spec {spec!r} lacks {missing}. Write it as {SPEC_EXAMPLE!r}.")
    fmt = fields["format"].lower()
    if fmt not in ("coco", "lvis"):
        raise ValueError(f"Dataset spec {spec!r}: format must be 'coco' or 'lvis', not {fmt!r}")
    if fmt == "lvis" and (fields.get("novel") or fields.get("split")):
        raise ValueError(
            f"Dataset spec {spec!r}: an LVIS-format file carries its split in its categories "
            "('frequency': 'r' or 'split': 'novel'); remove novel=/split= or use format=coco"
        )
    return {
        "name": fields["name"],
        "format": fmt,
        "json": _resolve(fields["json"]),
        "images": _resolve(fields["images"]),
        "base_only": _truthy(fields.get("base_only", ""), spec),
        "novel": [n.strip() for n in fields.get("novel", "").split(";") if n.strip()],
        "split": _resolve(fields["split"]) if fields.get("split") else "",
    }


def register_dataset_spec(spec: str) -> str:
    """Register the dataset a spec describes; returns its name. Idempotent."""
    s = parse_dataset_spec(spec)
    if s["format"] == "coco":
        register_coco_format_ov_dataset(
            s["name"],
            s["json"],
            s["images"],
            novel=s["novel"],
            split_file=s["split"],
            base_only=s["base_only"],
        )
    else:
        register_lvis_format_dataset(s["name"], s["json"], s["images"], base_only=s["base_only"])
    logger.info(f"Registered dataset {s['name']!r} ({s['format']} format, {s['json']})")
    return str(s["name"])


def register_datasets_from_config(cfg) -> List[str]:
    """Register every spec of ``cfg.MODEL.OVD.CUSTOM_DATASETS``; returns the names."""
    return [register_dataset_spec(spec) for spec in cfg.MODEL.OVD.CUSTOM_DATASETS]


def add_dataset_arguments(parser):
    """Add ``--register-dataset SPEC`` (repeatable) to an ``argparse`` parser; returns it."""
    parser.add_argument(
        "--register-dataset",
        action="append",
        default=[],
        metavar="SPEC",
        help="register your own dataset (repeatable), e.g. " + SPEC_EXAMPLE.replace("%", "%%"),
    )
    return parser


def merge_dataset_arguments(cfg, args):
    """Append the ``--register-dataset`` specs of parsed ``args`` (none for a parser without the
    flag) to ``cfg.MODEL.OVD.CUSTOM_DATASETS`` (``cfg`` not frozen); returns ``cfg``. Specs
    already in the list are not repeated."""
    specs = list(cfg.MODEL.OVD.CUSTOM_DATASETS)
    for spec in getattr(args, "register_dataset", None) or []:
        if spec not in specs:
            specs.append(spec)
    cfg.MODEL.OVD.CUSTOM_DATASETS = specs
    return cfg
