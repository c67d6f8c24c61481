"""Swap the vocabulary of a built detector without rebuilding it."""

import logging
from typing import Optional

import torch

from ..clip.text_embeddings import VocabularyEncoder
from ..vocabulary import Vocabulary, load_vocabulary
from .roi_heads.ov_predictor import TextClassifier

__all__ = ["set_vocabulary"]

logger = logging.getLogger(__name__)


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
        cfg: the model's config, used to encode the names (``MODEL.OVD.CLIP`` / ``TEXT``).
        text_embeddings: (K, D) precomputed embeddings instead of encoding (then cfg is unused).
    Returns:
        the loaded :class:`Vocabulary` (e.g. for ``MetadataCatalog`` ``thing_classes``).
    """
    vocabulary = load_vocabulary(vocabulary)
    classifiers = [m for m in model.modules() if isinstance(m, TextClassifier)]
    if not classifiers:
        raise ValueError(
            f"{type(model).__name__} has no open-vocabulary classifier: build it with an ovdet "
            "ROI head (MODEL.ROI_HEADS.NAME 'OVROIHeads' or 'ViLDROIHeads')."
        )
    if text_embeddings is None:
        if cfg is None:
            raise ValueError("set_vocabulary needs the model's cfg (or text_embeddings)")
        text_embeddings = VocabularyEncoder(cfg)(vocabulary)
    if text_embeddings.shape[0] != len(vocabulary):
        raise ValueError(
            f"{text_embeddings.shape[0]} text embeddings for {len(vocabulary)} classes"
        )
    base = torch.tensor(vocabulary.base_mask, dtype=torch.bool)
    for classifier in classifiers:
        classifier.set_test_embeddings(text_embeddings, base)
        classifier.test_vocabulary = vocabulary
    logger.info("Test vocabulary set: %d classes (%s)", len(vocabulary), vocabulary.source)
    return vocabulary
