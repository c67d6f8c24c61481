"""The generated open-vocabulary dataset: procedurally drawn objects with exact boxes and masks,
LVIS-format annotations with f/c/r frequencies, and captions for VLM pretraining.

Quick start::

    from ovdet_plugin.data.synthetic import generate_synthetic_dataset
    generate_synthetic_dataset("datasets/ovdet_synthetic", seed=0)

Then the dataset names ``ovdet_synthetic_train`` / ``_train_all`` / ``_val`` work (see
``ovdet_plugin.data.datasets.synthetic``).
"""

from .crops import iter_object_crops, load_captions
from .generator import (
    SyntheticConfig,
    frequency_of,
    frequency_thresholds,
    generate_synthetic_dataset,
)
from .shapes import OBJECT_KINDS, ObjectKind

__all__ = [
    "SyntheticConfig",
    "generate_synthetic_dataset",
    "frequency_thresholds",
    "frequency_of",
    "iter_object_crops",
    "load_captions",
    "OBJECT_KINDS",
    "ObjectKind",
]
