"""Data side of the plugin: dataset registrations (``datasets``) and the generated
open-vocabulary dataset (``synthetic``). Importing it registers the built-in dataset names."""

from . import datasets  # noqa: F401  (registers the built-in names)
from .datasets import (  # noqa: F401
    datasets_root,
    get_dataset_vocabulary,
    register_builtin_datasets,
    register_coco_format_ov_dataset,
    register_dataset_spec,
    register_lvis_format_dataset,
    register_synthetic_dataset,
)

__all__ = [
    "datasets_root",
    "get_dataset_vocabulary",
    "register_builtin_datasets",
    "register_lvis_format_dataset",
    "register_coco_format_ov_dataset",
    "register_dataset_spec",
    "register_synthetic_dataset",
]
