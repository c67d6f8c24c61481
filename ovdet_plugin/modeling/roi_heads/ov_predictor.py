"""The open-vocabulary box predictor shared by every method's ROI heads.

Shape shorthand: N regions, C box-head feature channels, D CLIP embedding width, K classes of the
active vocabulary; background is the last logit column (index K), as in Detectron2.

region features (N, C) -> projection (N, D) -> L2 norm -> cosine against the frozen text
classifier (K, D) and a background embedding -> times a temperature -> logits (N, K+1).
Box regression is Detectron2's own (class-agnostic with ``CLS_AGNOSTIC_BBOX_REG``).

The predictor holds two vocabularies: the training one (used while ``self.training``) and the
test one (used in eval mode; ``MODEL.OVD.TEST_VOCABULARY``, or swapped at any time with
:meth:`TextClassifier.set_vocabulary`, the one owner of a swap). Both are non-persistent buffers:
checkpoints never carry text embeddings, so a model trained on one vocabulary loads and predicts
with any other. The vocabularies are resolved once, when the ROI heads are built
(:func:`resolve_vocabularies`), and passed down to the classifier.

The text encoder (:class:`VocabularyEncoder`, with its CLIP text tower once built) is not kept by
the model: it lives as long as the build, unless the build runs inside :func:`keep_text_encoder`,
which hands it to the caller for a later vocabulary swap (``tools/demo.py --vocabulary``).
"""

import contextlib
import logging
from contextvars import ContextVar
from typing import Dict, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from torch import nn

from ...clip.text_embeddings import VocabularyEncoder
from ...vocabulary import Vocabulary, load_vocabulary

__all__ = ["OVFastRCNNOutputLayers", "TextClassifier", "TextEncoderKeeper", "keep_text_encoder"]

logger = logging.getLogger(__name__)

BACKGROUND_MODES = ("learned", "text")
TEMPERATURE_MODES = ("none", "inverse", "scale")
NOVEL_MASK_MODES = ("none", "zero", "neg_inf")


def _check_choice(value: str, choices: Sequence[str], key: str) -> str:
    if value not in choices:
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}")
    return value


class TextClassifier(nn.Module):
    """Cosine classifier against frozen class embeddings, with a background embedding and a
    temperature.

    logits_k = cos(e, t_k) * scale, with scale = T (fixed; ViLD: 100, methods §1.2),
    T / t (t learnable, init 1; F-VLM: cos / (0.01 t), methods §2.2) or s (learnable, init T;
    F-ViT: init 50, methods §3.8).
    """

    def __init__(
        self,
        train_embeddings: torch.Tensor,
        train_base_mask: torch.Tensor,
        *,
        test_embeddings: Optional[torch.Tensor] = None,
        test_base_mask: Optional[torch.Tensor] = None,
        background: str = "learned",
        background_embedding: Optional[torch.Tensor] = None,
        temperature: float = 100.0,
        learn_temperature: str = "none",
        novel_mask: str = "none",
        train_vocabulary: Optional[Vocabulary] = None,
        test_vocabulary: Optional[Vocabulary] = None,
    ):
        """
        Args:
            train_embeddings: (K, D) L2-normalised class embeddings of the training vocabulary.
            train_base_mask: (K,) bool, True for base classes.
            test_embeddings, test_base_mask: the same for the test vocabulary (default: train's).
            background: "learned" (a normalised learnable vector, init N(0, 0.01); ViLD) or "text"
                (the fixed ``background_embedding``; F-VLM, F-ViT).
            background_embedding: (D,) or (1, D) fixed background embedding for "text".
            temperature: T.
            learn_temperature: "none", "inverse" (F-VLM) or "scale" (F-ViT).
            novel_mask: training-time treatment of novel-class logits: "none", "zero" (multiply
                by 0, ViLD ``mask_rare``, methods §1.3) or "neg_inf" (F-ViT, methods §3.8).
            train_vocabulary, test_vocabulary: the :class:`Vocabulary` the rows stand for (the
                test one defaults to the training one); ``None`` when built from bare tensors.

        The classifier holds embeddings, never a text encoder: a swap encodes outside it
        (:func:`ovdet_plugin.set_vocabulary`) and hands the rows to :meth:`set_vocabulary`.
        """
        super().__init__()
        self.train_vocabulary = train_vocabulary
        self.test_vocabulary = test_vocabulary if test_vocabulary is not None else train_vocabulary
        dim = train_embeddings.shape[1]
        self.embed_dim = dim
        self.background = _check_choice(
            background, BACKGROUND_MODES, "MODEL.OVD.CLASSIFIER.BACKGROUND"
        )
        self.learn_temperature = _check_choice(
            learn_temperature, TEMPERATURE_MODES, "MODEL.OVD.CLASSIFIER.LEARN_TEMPERATURE"
        )
        self.novel_mask = _check_choice(
            novel_mask, NOVEL_MASK_MODES, "MODEL.OVD.CLASSIFIER.NOVEL_MASK"
        )
        self.temperature = float(temperature)
        self.register_buffer(
            "train_embeddings", F.normalize(train_embeddings.float(), dim=1), False
        )
        self.register_buffer("train_base_mask", train_base_mask.bool(), False)
        self.register_buffer("test_embeddings", self.train_embeddings.clone(), False)
        self.register_buffer("test_base_mask", self.train_base_mask.clone(), False)
        if test_embeddings is not None:
            self._set_test_embeddings(test_embeddings, test_base_mask)
        if background == "learned":
            self.bg_embedding = nn.Parameter(torch.randn(1, dim) * 0.01)  # ViLD: N(0, 0.01)
        else:
            if background_embedding is None:
                raise ValueError("background='text' needs a background_embedding")
            bg = F.normalize(background_embedding.float().reshape(1, -1), dim=1)
            if bg.shape[1] != dim:
                raise ValueError(f"background embedding width {bg.shape[1]} != class width {dim}")
            self.register_buffer("bg_embedding", bg, False)
        if learn_temperature == "inverse":
            self.inverse_temperature = nn.Parameter(torch.ones(()))  # t, init 1 (F-VLM)
        elif learn_temperature == "scale":
            self.logit_scale = nn.Parameter(torch.tensor(float(temperature)))  # s, init T (F-ViT)

    # ---- vocabulary ------------------------------------------------------------------------
    def set_vocabulary(self, vocabulary: Vocabulary, embeddings: torch.Tensor) -> None:
        """Make ``vocabulary`` the test vocabulary (eval mode); training is unaffected.

        Args:
            vocabulary: the :class:`Vocabulary` (its base/novel flags become the test base mask).
            embeddings: (K', D) its class embeddings, K' = ``len(vocabulary)``.
        """
        if embeddings.shape[0] != len(vocabulary):
            raise ValueError(
                f"{embeddings.shape[0]} text embeddings for {len(vocabulary)} classes "
                f"(vocabulary {vocabulary.source!r}): encode exactly this vocabulary."
            )
        self._set_test_embeddings(embeddings, torch.tensor(vocabulary.base_mask, dtype=torch.bool))
        self.test_vocabulary = vocabulary

    def _set_test_embeddings(self, embeddings: torch.Tensor, base_mask: Optional[torch.Tensor]):
        """(K', D) test embeddings; (K',) base mask (default: all novel)."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(
                f"Text embeddings of shape {tuple(embeddings.shape)} do not fit this head, which "
                f"expects (K, {self.embed_dim}): the vocabulary was encoded with a CLIP model of "
                f"another width. Encode it with the CLIP model the detector was trained with."
            )
        if base_mask is None:
            base_mask = torch.zeros(embeddings.shape[0], dtype=torch.bool)
        if base_mask.shape != (embeddings.shape[0],):
            raise ValueError(
                f"base mask shape {tuple(base_mask.shape)} != ({embeddings.shape[0]},)"
            )
        device = self.train_embeddings.device
        self.test_embeddings = F.normalize(embeddings.float(), dim=1).to(device)
        self.test_base_mask = base_mask.bool().to(device)

    @property
    def class_embeddings(self) -> torch.Tensor:
        """(K, D) embeddings of the active vocabulary (training one in train mode)."""
        return self.train_embeddings if self.training else self.test_embeddings

    @property
    def base_mask(self) -> torch.Tensor:
        return self.train_base_mask if self.training else self.test_base_mask

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    # ---- scoring ---------------------------------------------------------------------------
    def logit_scale_value(self) -> torch.Tensor:
        if self.learn_temperature == "inverse":
            return self.temperature / self.inverse_temperature
        if self.learn_temperature == "scale":
            return self.logit_scale
        return torch.tensor(self.temperature, device=self.train_embeddings.device)

    def rows(self) -> torch.Tensor:
        """(K+1, D) normalised rows: the class embeddings, then background."""
        return torch.cat([self.class_embeddings, F.normalize(self.bg_embedding, dim=1)], dim=0)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) L2-normalised region embeddings -> (N, K+1) logits (background last)."""
        return embeddings @ self.rows().t() * self.logit_scale_value()

    def mask_novel(self, logits: torch.Tensor) -> torch.Tensor:
        """Training-time novel-class treatment of (N, K+1) logits (see ``novel_mask``)."""
        novel = ~self.base_mask
        if self.novel_mask == "none" or not bool(novel.any()):
            return logits
        keep = torch.cat([~novel, novel.new_ones(1)])  # background always kept
        if self.novel_mask == "zero":
            return logits * keep.to(logits.dtype)  # ViLD: logits x 0, still in the softmax
        # F-ViT: removed from the softmax. The most negative finite value rather than -inf keeps
        # Detectron2's sigmoid CE finite (BCE of -inf is NaN) and works in fp16.
        return logits.masked_fill(~keep, torch.finfo(logits.dtype).min)


class OVFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Detectron2's box predictor with the linear classifier replaced by an open-vocabulary one.

    ``forward`` returns Detectron2's ``(scores (N, K+1), deltas (N, 4))``, so Detectron2's losses,
    federated loss, sigmoid CE and inference all apply unchanged. ``num_classes`` is the training
    vocabulary's size (used by the training losses); inference follows the active vocabulary.
    """

    @configurable
    def __init__(
        self,
        input_shape: ShapeSpec,
        *,
        text_classifier: TextClassifier,
        projection_bias: bool = True,
        background_weight: float = 1.0,
        **kwargs,
    ):
        """
        Args:
            input_shape: box-head output shape.
            text_classifier: the cosine classifier (holds the vocabularies).
            projection_bias: bias of the projection to the CLIP width (ViLD's ``project-to-clip``
                has one; F-VLM's projection is bias-free, methods §2.2).
            background_weight: weight of background RoIs in the softmax CE (F-VLM 0.9,
                methods §2.2; F-ViT 0.9 LVIS / 0.6 COCO, methods §3.8); the weighted sum is divided
                by the number of RoIs.
            kwargs: :class:`FastRCNNOutputLayers` arguments (num_classes must equal the training
                vocabulary size).
        """
        if not kwargs.get("cls_agnostic_bbox_reg", False):
            raise ValueError(
                "Open-vocabulary heads regress boxes class-agnostically (ViLD, F-VLM, F-ViT): set "
                "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG True."
            )
        super().__init__(input_shape, **kwargs)
        if self.num_classes != text_classifier.train_embeddings.shape[0]:
            raise ValueError("num_classes must equal the training vocabulary size")
        in_dim = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        del self.cls_score  # replaced by projection + text classifier
        self.projection = nn.Linear(in_dim, text_classifier.embed_dim, bias=projection_bias)
        self.text_classifier = text_classifier
        self.background_weight = float(background_weight)

    @classmethod
    def from_config(cls, cfg, input_shape, vocabularies=None):
        """``vocabularies``: optional ``(train, test)`` :class:`Vocabulary` pair already loaded."""
        ret = super().from_config(cfg, input_shape)
        ret.update(build_text_classifier_args(cfg, vocabularies))
        ret["num_classes"] = ret["text_classifier"].train_embeddings.shape[0]
        return ret

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C[, h, w]) box-head features -> (N, D) L2-normalised region embeddings."""
        return F.normalize(self.projection(x.flatten(start_dim=1)), dim=1)

    def forward(self, x: torch.Tensor):
        x = x.flatten(start_dim=1)
        return self.text_classifier(self.embed(x)), self.bbox_pred(x)

    def predict_log_probs(self, predictions) -> torch.Tensor:
        """(N, K+1) float32 log of :meth:`predict_probs` (log-softmax, or log-sigmoid with
        sigmoid CE), exact where the probabilities themselves would underflow."""
        scores = predictions[0].float()
        return F.logsigmoid(scores) if self.use_sigmoid_ce else F.log_softmax(scores, dim=-1)

    def losses(self, predictions, proposals) -> Dict[str, torch.Tensor]:
        scores, deltas = predictions
        scores = self.text_classifier.mask_novel(scores)
        losses = super().losses((scores, deltas), proposals)
        if self.use_sigmoid_ce or self.background_weight == 1.0:
            return losses
        gt_classes = (
            cat([p.gt_classes for p in proposals], dim=0) if len(proposals) else scores.new_zeros(0)
        )
        losses["loss_cls"] = weighted_background_ce(scores, gt_classes, self.background_weight)
        losses["loss_cls"] = losses["loss_cls"] * self.loss_weight.get("loss_cls", 1.0)
        return losses


def weighted_background_ce(logits: torch.Tensor, gt_classes: torch.Tensor, bg_weight: float):
    """Softmax CE where background RoIs (label K) weigh ``bg_weight``: sum(w_i ce_i) / N.

    (N, K+1) logits, (N,) labels -> scalar. An empty batch gives 0 with a gradient path.
    """
    if logits.numel() == 0:
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits, gt_classes.long(), reduction="none")
    weights = torch.where(gt_classes == logits.shape[1] - 1, bg_weight, 1.0).to(ce.dtype)
    return (ce * weights).sum() / max(len(gt_classes), 1)


class TextEncoderKeeper:
    """What :func:`keep_text_encoder` yields: ``encoder``, the :class:`VocabularyEncoder` of the
    last text classifier built inside the ``with`` block (None before one is built), for a later
    vocabulary swap to reuse its text tower (:func:`ovdet_plugin.set_vocabulary` ``encoder=``).
    :meth:`release` drops it (and with it the text tower, if nothing else holds it)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.encoder: Optional[VocabularyEncoder] = None

    def release(self) -> None:
        self.encoder = None


_KEEPER: ContextVar[Optional[TextEncoderKeeper]] = ContextVar("ovdet_text_encoder", default=None)


@contextlib.contextmanager
def keep_text_encoder(enabled: bool = True) -> Iterator[TextEncoderKeeper]:
    """Keep the text encoder of the models built inside the block, for a vocabulary swap::

        with keep_text_encoder() as kept:
            model = build_model(cfg)
        ovdet_plugin.set_vocabulary(model, "cat, sofa", cfg, encoder=kept.encoder)
        kept.release()

    Outside such a block (training, evaluation) the encoder and its CLIP are dropped when the
    build returns. ``enabled=False`` yields a keeper that keeps nothing (``encoder`` stays None).
    """
    keeper = TextEncoderKeeper(enabled)
    token = _KEEPER.set(keeper)
    try:
        yield keeper
    finally:
        _KEEPER.reset(token)


def resolve_vocabularies(cfg, vocabularies=None):
    """(train, test) vocabularies from ``MODEL.OVD.TRAIN/TEST_VOCABULARY`` (the test one is the
    training one when ``TEST_VOCABULARY`` is ""); ``vocabularies`` already resolved are returned
    as they are. The ROI heads call it once and pass the pair down."""
    if vocabularies is not None:
        return vocabularies
    train = load_vocabulary(cfg.MODEL.OVD.TRAIN_VOCABULARY)
    test_spec = cfg.MODEL.OVD.TEST_VOCABULARY
    return train, (load_vocabulary(test_spec) if test_spec else train)


def _base_mask(vocabulary: Vocabulary) -> torch.Tensor:
    return torch.tensor(vocabulary.base_mask, dtype=torch.bool)


def build_text_classifier_args(cfg, vocabularies=None) -> dict:
    """Keyword arguments of :class:`OVFastRCNNOutputLayers` that come from ``MODEL.OVD``."""
    c = cfg.MODEL.OVD.CLASSIFIER
    train_vocab, test_vocab = resolve_vocabularies(cfg, vocabularies)
    encoder = VocabularyEncoder(cfg, file_vocabulary=train_vocab)
    train_emb = encoder(train_vocab)
    dim = train_emb.shape[1]
    test_emb = train_emb if test_vocab is train_vocab else encoder(test_vocab, embed_dim=dim)
    background = None
    if c.BACKGROUND == "text":
        bg_vocab = Vocabulary.from_names([c.BACKGROUND_PROMPT], source="background")
        background = encoder(bg_vocab, embed_dim=dim)[0]
    classifier = TextClassifier(
        train_emb,
        _base_mask(train_vocab),
        test_embeddings=test_emb,
        test_base_mask=_base_mask(test_vocab),
        background=c.BACKGROUND,
        background_embedding=background,
        temperature=c.TEMPERATURE,
        learn_temperature=c.LEARN_TEMPERATURE,
        novel_mask=c.NOVEL_MASK,
        train_vocabulary=train_vocab,
        test_vocabulary=test_vocab,
    )
    keeper = _KEEPER.get()
    if keeper is not None and keeper.enabled:
        keeper.encoder = encoder  # else the encoder, with its CLIP, goes when this returns
    return {
        "text_classifier": classifier,
        "projection_bias": c.PROJECTION_BIAS,
        "background_weight": c.BACKGROUND_WEIGHT,
    }
