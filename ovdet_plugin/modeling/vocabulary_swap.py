"""Swap the vocabulary of a built detector without rebuilding it."""

import logging
from typing import List, Optional

import torch

from ..clip.text_embeddings import VocabularyEncoder
from ..vocabulary import Vocabulary, load_vocabulary
from .roi_heads.ov_predictor import TextClassifier

__all__ = ["get_test_vocabulary", "set_vocabulary"]

logger = logging.getLogger(__name__)


def _text_classifiers(model: torch.nn.Module) -> List[TextClassifier]:
    classifiers = [m for m in model.modules() if isinstance(m, TextClassifier)]
    if not classifiers:
        raise ValueError(
            f"{type(model).__name__} has no open-vocabulary classifier: build it with an ovdet "
            "ROI head (MODEL.ROI_HEADS.NAME 'OVROIHeads' or 'ViLDROIHeads')."
        )
    return classifiers


def get_test_vocabulary(model: torch.nn.Module) -> Optional[Vocabulary]:
    """The vocabulary ``model`` detects in eval mode: the one its build resolved from
    ``MODEL.OVD.TEST_VOCABULARY`` / ``TRAIN_VOCABULARY``, or the last one set. None for a
    classifier built from bare tensors."""
    return _text_classifiers(model)[0].test_vocabulary


def set_vocabulary(
    model: torch.nn.Module,
    vocabulary,
    cfg=None,
    *,
    text_embeddings: Optional[torch.Tensor] = None,
) -> Vocabulary:
    """Make ``model`` detect ``vocabulary`` at inference (eval mode); training is unaffected.

    Args:
        model: a detector holding open-vocabulary heads (any module with a ``TextClassifier``).
        vocabulary: anything :func:`load_vocabulary` takes ("lvis", "cat, sofa", a file, ...).
            Base/novel flags travel with it; a custom vocabulary is all novel.
        cfg: the model's config; used only for a classifier built without a text encoder. A
            classifier built from a config encodes with the encoder of its build (the same
            ``MODEL.OVD.CLIP`` / ``TEXT`` settings, and its text tower once built).
        text_embeddings: (K, D) precomputed embeddings instead of encoding.
    Returns:
        the loaded :class:`Vocabulary` (e.g. for ``MetadataCatalog`` ``thing_classes``).
    """
    vocabulary = load_vocabulary(vocabulary)
    classifiers = _text_classifiers(model)
    if text_embeddings is None:
        encoder = classifiers[0].text_encoder  # the build's, with its text tower: no 2nd CLIP
        if encoder is None:
            if cfg is None:
                raise ValueError(
                    "set_vocabulary needs text_embeddings, or the model's cfg to encode the "
                    "vocabulary: this classifier was built without a text encoder."
                )
            encoder = VocabularyEncoder(cfg)
        text_embeddings = encoder(vocabulary)
    for classifier in classifiers:
        classifier.set_vocabulary(vocabulary, text_embeddings)
    logger.info("Test vocabulary set: %d classes (%s)", len(vocabulary), vocabulary.source)
    return vocabulary
