"""Swap the vocabulary of a built detector without rebuilding it: encode the names, then hand
the rows to every :meth:`TextClassifier.set_vocabulary` of the model. The encoder is the build's
when the build ran inside :func:`keep_text_encoder` (no second CLIP), else one made from the
config."""

import logging
from typing import List, Optional

import torch

from ..clip.text_embeddings import VocabularyEncoder
from ..vocabulary import Vocabulary, load_vocabulary
from .roi_heads.ov_predictor import TextClassifier, keep_text_encoder

__all__ = ["get_test_vocabulary", "keep_text_encoder", "set_vocabulary"]

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
    encoder: Optional[VocabularyEncoder] = None,
) -> Vocabulary:
    """Make ``model`` detect ``vocabulary`` at inference (eval mode); training is unaffected.

    Args:
        model: a detector holding open-vocabulary heads (any module with a ``TextClassifier``).
        vocabulary: anything :func:`load_vocabulary` takes ("lvis", "cat, sofa", a file, ...).
            Base/novel flags travel with it; a custom vocabulary is all novel.
        cfg: the model's config: without ``encoder``, the vocabulary is encoded with a
            :class:`VocabularyEncoder` of it (``MODEL.OVD.CLIP`` / ``TEXT``; it builds a CLIP).
        text_embeddings: (K, D) precomputed embeddings instead of encoding.
        encoder: the build's encoder (:func:`keep_text_encoder`), whose text tower is reused.
    Returns:
        the loaded :class:`Vocabulary` (e.g. for ``MetadataCatalog`` ``thing_classes``).
    """
    vocabulary = load_vocabulary(vocabulary)
    classifiers = _text_classifiers(model)
    if text_embeddings is None:
        if encoder is None:
            if cfg is None:
                raise ValueError(
                    "set_vocabulary needs the model's cfg to encode the vocabulary (or the "
                    "build's encoder= from keep_text_encoder(), or text_embeddings=)."
                )
            if not cfg.MODEL.OVD.CLIP.PRETRAINED:
                logger.warning(
                    "MODEL.OVD.CLIP.PRETRAINED is empty: the vocabulary is encoded by a new "
                    "randomly initialised CLIP, not the build's; build the model inside "
                    "keep_text_encoder() and pass encoder= to reuse the build's."
                )
            # the file of MODEL.OVD.TEXT.EMBEDDINGS_FILE serves the training vocabulary only,
            # as in the build
            encoder = VocabularyEncoder(cfg, file_vocabulary=classifiers[0].train_vocabulary)
        text_embeddings = encoder(vocabulary)
    for classifier in classifiers:
        classifier.set_vocabulary(vocabulary, text_embeddings)
    logger.info("Test vocabulary set: %d classes (%s)", len(vocabulary), vocabulary.source)
    return vocabulary
