"""Dataset registrations: LVIS v1 open-vocabulary, OV-COCO, any LVIS-format file, any COCO-format
file with its own base/novel split, and the generated dataset. Importing this module registers
the built-in names (files are only read when a dataset is loaded)."""

from .coco_ov import OV_COCO_SPLITS, load_ov_coco_json, make_ov_coco_json, register_ov_coco
from .common import datasets_root, get_dataset_vocabulary
from .custom import (
    add_dataset_arguments,
    load_coco_format_ov_json,
    merge_dataset_arguments,
    parse_dataset_spec,
    register_coco_format_ov_dataset,
    register_dataset_spec,
    register_datasets_from_config,
)
from .lvis_format import (
    load_lvis_format_json,
    lvis_format_metadata,
    register_lvis_format_dataset,
)
from .lvis_ov import LVIS_OV_SPLITS, load_lvis_v1_ov, register_lvis_v1_ov
from .synthetic import register_synthetic_dataset

__all__ = [
    "datasets_root",
    "get_dataset_vocabulary",
    "register_lvis_format_dataset",
    "register_coco_format_ov_dataset",
    "load_coco_format_ov_json",
    "parse_dataset_spec",
    "register_dataset_spec",
    "register_datasets_from_config",
    "add_dataset_arguments",
    "merge_dataset_arguments",
    "load_lvis_format_json",
    "lvis_format_metadata",
    "register_lvis_v1_ov",
    "load_lvis_v1_ov",
    "LVIS_OV_SPLITS",
    "register_ov_coco",
    "load_ov_coco_json",
    "make_ov_coco_json",
    "OV_COCO_SPLITS",
    "register_synthetic_dataset",
    "register_builtin_datasets",
]


def register_builtin_datasets(root=None) -> None:
    """(Re-)register every built-in name under ``root`` (default ``$DETECTRON2_DATASETS`` or
    ``./datasets``): ``lvis_v1_train_ov``, ``lvis_v1_val``, ``coco_2017_ov_train``,
    ``coco_2017_ov_val``, ``ovdet_synthetic_{train,train_all,val}``."""
    import os

    root = datasets_root() if root is None else os.fspath(root)
    register_lvis_v1_ov(root)
    register_ov_coco(root)
    # lazy metadata: importing the plugin should not read annotation files
    register_synthetic_dataset(os.path.join(root, "ovdet_synthetic"), eager=False)


register_builtin_datasets()
