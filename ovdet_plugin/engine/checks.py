"""Checks run before expensive work starts (building CLIP, loading data, training, evaluating):
each failure names the problem and the fix.

Used by ``OVDTrainer`` (``tools/train_net.py``), ``tools/demo.py`` and the pretraining tools.
"""

import logging
import os
import tempfile
from typing import Optional

import torch
from detectron2.data import MetadataCatalog

from ..vocabulary import Vocabulary, load_vocabulary

__all__ = [
    "check_device",
    "check_vocabularies_match_datasets",
    "check_vocabulary_matches_dataset",
    "check_writable_dir",
]

logger = logging.getLogger(__name__)


def check_device(device: str, option: str = "MODEL.DEVICE") -> None:
    """Raise ``ValueError`` when ``device`` (e.g. "cuda", "cuda:1") is not usable here."""
    dev = str(device).strip().lower()
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"{option} is {device!r} but this machine has no usable CUDA GPU "
                f"(torch.cuda.is_available() is False). Set {option} cpu, or run on a GPU "
                "machine with a CUDA build of torch."
            )
        index = dev.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise ValueError(
                f"{option} is {device!r} but only {torch.cuda.device_count()} GPU(s) are "
                f"visible. Set {option} to cuda:0 .. cuda:{torch.cuda.device_count() - 1}."
            )
    elif dev != "cpu" and not dev.startswith("mps"):
        raise ValueError(f"{option} {device!r} is not a device: use cpu or cuda[:N].")


def check_writable_dir(path: str, option: str) -> str:
    """Create ``path`` if needed and make sure a file can be written in it; raise
    ``PermissionError``/``NotADirectoryError`` naming ``option`` otherwise. Returns ``path``."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{option} {path!r} is a file, not a folder: give a folder path.")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise PermissionError(
            f"{option} {path!r} is not writable ({e.strerror}). Choose a folder you can write "
            f"to (set {option}), or fix its permissions."
        ) from e
    return path


def _normalize(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def check_vocabulary_matches_dataset(
    vocabulary, dataset_name: str, option: str, vocabulary_obj: Optional[Vocabulary] = None
) -> None:
    """Raise ``ValueError`` when a vocabulary does not list a dataset's classes in its
    contiguous-id order (names compared case-insensitively, ``_`` = space).

    The detector's class ``i`` is the vocabulary's ``i``-th name, and the dataset's label ``i`` is
    its ``thing_classes[i]``: any difference trains boxes under wrong names, or fails later at
    evaluation (``KeyError``/``IndexError``). A dataset without ``thing_classes`` metadata is not
    checked.

    Args:
        vocabulary: the vocabulary spec (named in the message).
        dataset_name: a registered dataset, whose metadata is read.
        option: the config key that gave the vocabulary (named in the message).
        vocabulary_obj: the loaded vocabulary, if already loaded.
    """
    classes = MetadataCatalog.get(dataset_name).get("thing_classes")
    if not classes:
        return
    vocab = vocabulary_obj if vocabulary_obj is not None else load_vocabulary(vocabulary)
    fix = (
        f"Set {option} 'dataset:{dataset_name}' (the dataset's own classes), or a vocabulary that "
        "lists exactly the dataset's classes in its order."
    )
    if len(vocab) != len(classes):
        raise ValueError(
            f"{option} {str(vocabulary)!r} has {len(vocab)} classes but dataset "
            f"{dataset_name!r} has {len(classes)}: labels would be read as other classes. {fix}"
        )
    diff = [
        (i, v, c)
        for i, (v, c) in enumerate(zip(vocab.names, classes))
        if _normalize(v) != _normalize(c)
    ]
    if diff:
        shown = ", ".join(f"#{i}: {v!r} vs {c!r}" for i, v, c in diff[:5])
        raise ValueError(
            f"{option} {str(vocabulary)!r} and dataset {dataset_name!r} name {len(diff)} of their "
            f"{len(classes)} classes differently ({shown}): boxes would be trained or evaluated "
            f"under wrong names. {fix}"
        )


def evaluation_vocabulary(cfg):
    """(vocabulary spec, config key that gave it) used at evaluation: ``TEST_VOCABULARY``, or
    ``TRAIN_VOCABULARY`` when it is empty."""
    if cfg.MODEL.OVD.TEST_VOCABULARY:
        return cfg.MODEL.OVD.TEST_VOCABULARY, "MODEL.OVD.TEST_VOCABULARY"
    return (
        cfg.MODEL.OVD.TRAIN_VOCABULARY,
        "MODEL.OVD.TRAIN_VOCABULARY (MODEL.OVD.TEST_VOCABULARY is empty)",
    )


def check_vocabularies_match_datasets(cfg, train: bool = True, test: bool = True) -> None:
    """:func:`check_vocabulary_matches_dataset` for every ``DATASETS.TRAIN`` dataset (the
    training vocabulary, ``train``) and every ``DATASETS.TEST`` dataset (the test vocabulary,
    ``test``: evaluated at the end of training too). Reads only the registered metadata, so it
    runs before the model is built; a dataset whose classes are known only once it is loaded is
    checked again when the loaders are built."""
    if train:
        for name in cfg.DATASETS.TRAIN:
            check_vocabulary_matches_dataset(
                cfg.MODEL.OVD.TRAIN_VOCABULARY, name, "MODEL.OVD.TRAIN_VOCABULARY"
            )
    if test:
        spec, option = evaluation_vocabulary(cfg)
        for name in cfg.DATASETS.TEST:
            check_vocabulary_matches_dataset(spec, name, option)
