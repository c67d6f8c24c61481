"""Registration of the generated dataset (``ovdet_plugin.data.synthetic``).

Built-in names, for the folder ``$DETECTRON2_DATASETS/ovdet_synthetic``:

- ``ovdet_synthetic_train``: ``train.json``, rare (novel) annotations removed (base only).
- ``ovdet_synthetic_train_all``: ``train_all.json``, every annotation (an oracle / reference).
- ``ovdet_synthetic_val``: ``val.json``, every category; ``LVISEvaluator`` gives AP, APr/c/f.

:func:`register_synthetic_dataset` registers any generated folder under other names.
"""

import os
from typing import Dict, Optional

from .common import datasets_root
from .lvis_format import register_lvis_format_dataset

__all__ = ["register_synthetic_dataset", "SYNTHETIC_DEFAULT_DIR"]

SYNTHETIC_DEFAULT_DIR = "ovdet_synthetic"
README_SECTION = "Generated dataset (ovdet_synthetic)"


def register_synthetic_dataset(
    dataset_dir: Optional[str] = None, prefix: str = "ovdet_synthetic", eager: bool = True
) -> Dict[str, str]:
    """Register ``{prefix}_train``, ``{prefix}_train_all`` and ``{prefix}_val`` for a generated
    folder (default ``$DETECTRON2_DATASETS/ovdet_synthetic``). Returns ``{name: json_file}``.

    With ``eager`` the class metadata is read now if the files exist (else when loaded). A
    missing folder raises ``FileNotFoundError`` when the dataset is loaded, naming the path.
    """
    if dataset_dir is None:
        dataset_dir = os.path.join(datasets_root(), SYNTHETIC_DEFAULT_DIR)
    dataset_dir = os.fspath(dataset_dir)
    names = {}
    for suffix, file, base_only in (
        ("train", "train.json", True),
        ("train_all", "train_all.json", False),
        ("val", "val.json", False),
    ):
        name, json_file = f"{prefix}_{suffix}", os.path.join(dataset_dir, file)
        register_lvis_format_dataset(
            name,
            json_file,
            dataset_dir,
            base_only=base_only,
            readme_section=README_SECTION,
            extra_metadata={"synthetic_dir": dataset_dir},
            eager_metadata=eager,
            missing_hint="Generate it: python tools/generate_synthetic_data.py --out "
            + dataset_dir,
        )
        names[name] = json_file
    return names
