"""Text classifiers: one L2-normalised CLIP text embedding per class, built from a prompt ensemble
and cached on disk.

Recipe (ViLD, methods §1.2; F-VLM, methods §2.2): every prompt of a class (templates x, optionally,
synonyms) is encoded and L2-normalised; the class embedding is their mean, L2-normalised again.

Cache: one file per (model name, text-weights checksum, prompt set, names[, synonyms]) under
``$OVDET_CACHE`` (default ``~/.cache/ovdet``)``/text_embeddings``. Files are written atomically
and carry a checksum of their content; a corrupt, truncated or mismatching file is detected,
logged and rebuilt, never half-read. A cache folder that cannot be written (read-only, a path
under a file) is warned about once, naming the folder and the fix, before encoding; the
embeddings are then encoded without caching (a valid file already there is still read).
"""

import hashlib
import json
import logging
import os
import re
import tempfile
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..utils.atomic_io import atomic_write_path
from ..vocabulary import Vocabulary, load_vocabulary
from .loading import build_clip_model, clip_embed_dim, get_clip_tokenizer, text_weights_checksum
from .prompts import build_prompts, normalize_class_name

__all__ = [
    "encode_vocabulary",
    "get_text_embeddings",
    "load_embeddings_file",
    "save_embeddings_file",
    "text_embeddings_from_config",
    "VocabularyEncoder",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1
# Show a progress bar when a vocabulary needs more text-tower batches than this.
_PROGRESS_MIN_BATCHES = 4
# Cache folders already warned about as not writable (one warning per folder and process).
_UNWRITABLE_WARNED = set()


def default_cache_dir() -> str:
    root = os.environ.get("OVDET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ovdet")
    return os.path.join(root, "text_embeddings")


def _class_prompts(
    vocabulary: Vocabulary, prompts: str, single_prompt: str, average_synonyms: bool
) -> List[List[str]]:
    """Prompts of every class: ``out[k]`` is the list whose embeddings are averaged for class k."""
    out = []
    for name, synonyms in zip(vocabulary.names, vocabulary.synonyms):
        variants = synonyms if average_synonyms else (name,)
        texts: List[str] = []
        for variant in variants:
            norm = normalize_class_name(variant)
            if norm:
                texts.extend(build_prompts(norm, prompts, single_prompt))
        out.append(texts)
    return out


@torch.no_grad()
def encode_vocabulary(
    model: nn.Module,
    tokenizer,
    vocabulary,
    *,
    prompts: str = "vild",
    single_prompt: str = "a photo of a {}.",
    average_synonyms: bool = False,
    batch_size: int = 256,
    show_progress: Optional[bool] = None,
) -> torch.Tensor:
    """Encode a vocabulary with a CLIP text tower (no cache).

    Args:
        model: an open_clip model (its ``encode_text`` is used).
        tokenizer: the matching open_clip tokenizer.
        vocabulary: a :class:`Vocabulary` or any spec :func:`load_vocabulary` accepts.
        prompts: "vild" (63 templates), "clip" (80) or "single".
        single_prompt: template for "single".
        average_synonyms: also average over each class's synonyms.
        batch_size: prompts per text-tower forward pass.
        show_progress: tqdm bar; default: only when more than a few batches are needed.
    Returns:
        (K, D) float32 tensor on the CPU, rows L2-normalised.
    """
    vocabulary = load_vocabulary(vocabulary)
    per_class = _class_prompts(vocabulary, prompts, single_prompt, average_synonyms)
    texts = [t for class_texts in per_class for t in class_texts]
    owner = torch.tensor([k for k, class_texts in enumerate(per_class) for _ in class_texts])
    device = next(model.parameters()).device
    batches = range(0, len(texts), batch_size)
    if show_progress is None:
        show_progress = len(batches) > _PROGRESS_MIN_BATCHES
    dim = clip_embed_dim(model)
    sums = torch.zeros(len(vocabulary), dim, dtype=torch.float64)
    all_tokens = []
    for start in tqdm(batches, desc="text embeddings", unit="batch", disable=not show_progress):
        tokens = tokenizer(texts[start : start + batch_size])
        all_tokens.append(tokens)
        emb = F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1)  # each normalised
        sums.index_add_(0, owner[start : start + batch_size], emb.cpu().double())
    if all_tokens:
        _check_classes_differ_within_context(vocabulary, owner, torch.cat(all_tokens))
    counts = torch.bincount(owner, minlength=len(vocabulary)).clamp(min=1).unsqueeze(1)
    return F.normalize((sums / counts).float(), dim=-1)  # mean, then renormalised


def _check_classes_differ_within_context(vocabulary, owner: torch.Tensor, tokens: torch.Tensor):
    """Refuse two classes whose prompts tokenize identically: CLIP reads at most its context
    length (77 tokens), so names that differ only after it would get the same embedding."""
    seen = {}
    for k, name in enumerate(vocabulary.names):
        key = tokens[owner == k].numpy().tobytes()
        if key in seen and key:
            raise ValueError(
                f"Classes {seen[key]!r} and {name!r} get identical CLIP embeddings: their prompts "
                f"are the same within CLIP's {tokens.shape[1]}-token context (the names differ "
                "only after it). Shorten the names so that they differ earlier."
            )
        seen[key] = name


def _cache_key(model, vocabulary, prompts, single_prompt, average_synonyms) -> dict:
    return {
        "format": _CACHE_FORMAT,
        "model": getattr(model, "ovdet_model_name", type(model).__name__),
        "text_weights_sha256": text_weights_checksum(model),
        "prompts": prompts,
        "single_prompt": single_prompt if prompts == "single" else "",
        "average_synonyms": bool(average_synonyms),
        "names": list(vocabulary.names),
        "synonyms": [list(s) for s in vocabulary.synonyms] if average_synonyms else [],
    }


def _tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def _read_cache(path: str, key_hash: str, num_classes: int) -> Optional[torch.Tensor]:
    """The cached embeddings, or None when the file is missing or fails any check."""
    if not os.path.exists(path):
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        emb = blob["embeddings"]
        problem = None
        if blob.get("key_sha256") != key_hash:
            problem = "its key does not match"
        elif not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != num_classes:
            problem = "its embeddings have the wrong shape"
        elif _tensor_sha256(emb) != blob.get("embeddings_sha256"):
            problem = "its content checksum does not match"
    except Exception as e:  # truncated zip, pickle error, missing field, ...
        problem = f"it cannot be read ({type(e).__name__}: {e})"
    if problem:
        logger.warning("Text-embedding cache %s is invalid (%s); rebuilding it.", path, problem)
        return None
    return emb


def _write_cache(path: str, key: dict, key_hash: str, emb: torch.Tensor) -> None:
    blob = {
        "key_sha256": key_hash,
        "key_json": json.dumps(key),
        "embeddings": emb.contiguous(),
        "embeddings_sha256": _tensor_sha256(emb),
    }
    with atomic_write_path(path) as tmp:
        torch.save(blob, tmp)


def _cache_dir_problem(folder: str) -> Optional[str]:
    """Why no file can be written in ``folder`` (created if needed), or None if one can."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or str(e)
    return None


def _warn_uncached(folder: str, reason: str) -> None:
    if folder in _UNWRITABLE_WARNED:
        return
    _UNWRITABLE_WARNED.add(folder)
    logger.warning(
        "Text-embedding cache folder %s is not writable (%s): vocabularies are encoded without "
        "caching, again on every run. Set MODEL.OVD.TEXT.CACHE_DIR (or $OVDET_CACHE; "
        "cache_dir= in the API) to a writable folder, or fix the folder's permissions.",
        folder,
        reason,
    )


def get_text_embeddings(
    model: nn.Module,
    tokenizer,
    vocabulary,
    *,
    prompts: str = "vild",
    single_prompt: str = "a photo of a {}.",
    average_synonyms: bool = False,
    batch_size: int = 256,
    cache_dir: Optional[str] = None,
    show_progress: Optional[bool] = None,
) -> torch.Tensor:
    """:func:`encode_vocabulary` with the on-disk cache (same arguments, plus ``cache_dir``;
    ``cache_dir=""`` disables the cache). Returns (K, D) float32, rows L2-normalised."""
    vocabulary = load_vocabulary(vocabulary)
    args = dict(prompts=prompts, single_prompt=single_prompt, average_synonyms=average_synonyms)
    build_prompts("x", prompts, single_prompt)  # validate the prompt options before any work
    if cache_dir == "":
        return encode_vocabulary(
            model, tokenizer, vocabulary, batch_size=batch_size, show_progress=show_progress, **args
        )
    key = _cache_key(model, vocabulary, **args)
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    safe_model = re.sub(r"[^A-Za-z0-9._-]+", "_", key["model"])
    filename = f"{safe_model}-{prompts}-{len(vocabulary)}cls-{key_hash[:16]}.pt"
    folder = cache_dir or default_cache_dir()
    path = os.path.join(folder, filename)
    emb = _read_cache(path, key_hash, len(vocabulary))
    if emb is None:
        problem = _cache_dir_problem(folder)  # found before encoding, not after
        if problem:
            _warn_uncached(folder, problem)
        emb = encode_vocabulary(
            model, tokenizer, vocabulary, batch_size=batch_size, show_progress=show_progress, **args
        )
        if problem is None:
            try:
                _write_cache(path, key, key_hash, emb)
            except OSError as e:  # e.g. the disk filled up while writing
                _warn_uncached(folder, e.strerror or str(e))
                problem = str(e)
        if problem is None:
            logger.info(
                "Encoded %d classes with %s; cached at %s", len(vocabulary), key["model"], path
            )
    return emb


def save_embeddings_file(path: str, embeddings: torch.Tensor, vocabulary: Vocabulary, **info):
    """Write embeddings for :func:`load_embeddings_file`: ``.npy`` (K, D) or ``.pt`` (a dict that
    also records the class names, splits and ``info``, so a later load can check them)."""
    embeddings = embeddings.detach().float().cpu()
    with atomic_write_path(path) as tmp:
        if path.endswith(".npy"):
            with open(tmp, "wb") as f:
                np.save(f, embeddings.numpy())
        else:
            blob = {
                "embeddings": embeddings,
                "names": list(vocabulary.names),
                "splits": list(vocabulary.splits),
                "info_json": json.dumps(info),
            }
            torch.save(blob, tmp)


def load_embeddings_file(
    path: str, vocabulary=None, embed_dim: Optional[int] = None
) -> torch.Tensor:
    """Load precomputed class embeddings (``.npy`` or ``.pt``) and check them.

    Accepts (K, D) or (D, K) arrays (ViLD's released ``clip_synonym_prompt.npy`` is (512, 1203)),
    or a ``.pt`` dict written by :func:`save_embeddings_file` (whose class names must then equal
    the vocabulary's).

    Args:
        path: the file.
        vocabulary: the classes the rows must correspond to (anything :func:`load_vocabulary`
            takes); None skips the class-count check.
        embed_dim: the expected embedding width D (the detector head's); None skips the check.
    Returns:
        (K, D) float32 tensor, rows L2-normalised.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Text-embedding file {path!r} not found (MODEL.OVD.TEXT.EMBEDDINGS_FILE). Write one "
            "with tools/dump_text_embeddings.py, or set the key to '' to encode the vocabulary "
            "with MODEL.OVD.CLIP."
        )
    names = None
    try:
        if path.endswith(".npy"):
            arr = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(blob, dict):
                if "embeddings" not in blob:
                    raise ValueError(f"dict without an 'embeddings' entry (keys: {list(blob)})")
                arr, names = blob["embeddings"], blob.get("names")
            else:
                arr = blob
    except Exception as e:
        raise ValueError(f"Cannot read text-embedding file {path!r}: {e}") from e
    if not isinstance(arr, torch.Tensor) or arr.ndim != 2:
        shape = tuple(arr.shape) if hasattr(arr, "shape") else type(arr).__name__
        raise ValueError(f"Text-embedding file {path!r} must hold a 2-D array, got {shape}")
    arr = arr.float()
    vocab = load_vocabulary(vocabulary) if vocabulary is not None else None
    k = len(vocab) if vocab is not None else arr.shape[0]
    if arr.shape[0] != k and arr.shape[1] == k:
        arr = arr.t()  # stored as (D, K), like ViLD's classifier kernel
    elif arr.shape[0] == arr.shape[1] == k and _unit(arr.t()) and not _unit(arr):
        # square: the orientation is told by the norms (class embeddings are unit vectors)
        logger.info("Text-embedding file %s: square, unit columns: read as (D, K).", path)
        arr = arr.t()
    if arr.shape[0] != k:
        raise ValueError(
            f"Text-embedding file {path!r} has shape {tuple(arr.shape)} but the vocabulary "
            f"({vocab.source}) has {k} classes. Re-run tools/dump_text_embeddings.py for this "
            "vocabulary, or set the vocabulary that the file was made for."
        )
    if embed_dim is not None and arr.shape[1] != embed_dim:
        raise ValueError(
            f"Text-embedding file {path!r} has embedding width {arr.shape[1]} but the model "
            f"expects {embed_dim}. The file was made with another CLIP model: re-run "
            "tools/dump_text_embeddings.py with the detector's CLIP model."
        )
    if names is not None and vocab is not None and list(names) != list(vocab.names):
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(names, vocab.names)) if a != b][:3]
        raise ValueError(
            f"Text-embedding file {path!r} was made for other class names than vocabulary "
            f"{vocab.source!r} (first differences (index, file, vocabulary): {diff})."
        )
    if not torch.isfinite(arr).all() or (arr.norm(dim=1) == 0).any():
        raise ValueError(f"Text-embedding file {path!r} has non-finite or all-zero rows")
    return F.normalize(arr, dim=-1)


def _unit(arr: torch.Tensor) -> bool:
    """Every row of ``arr`` has norm 1 (to 1e-3)."""
    return bool(((arr.norm(dim=1) - 1).abs() < 1e-3).all())


class VocabularyEncoder:
    """Turns vocabularies into class embeddings the way a config asks; the CLIP model is built
    once, on first use, and shared by every vocabulary encoded through this object.

    ``MODEL.OVD.TEXT.EMBEDDINGS_FILE`` (if set) serves ``file_vocabulary`` (the vocabulary it was
    made for, normally the training one); any other vocabulary is encoded (and cached) with the
    CLIP model of ``MODEL.OVD.CLIP``.
    """

    def __init__(self, cfg, file_vocabulary=None):
        self.cfg = cfg
        self.file_vocabulary = file_vocabulary
        self._model = None

    def _clip(self):
        if self._model is None:
            clip = self.cfg.MODEL.OVD.CLIP
            self._model = (
                build_clip_model(clip.MODEL_NAME, clip.PRETRAINED),
                get_clip_tokenizer(clip.MODEL_NAME),
            )
        return self._model

    def __call__(self, vocabulary, embed_dim: Optional[int] = None) -> torch.Tensor:
        """(K, D) float32 embeddings of ``vocabulary``, rows L2-normalised."""
        text = self.cfg.MODEL.OVD.TEXT
        vocabulary = load_vocabulary(vocabulary)
        if text.EMBEDDINGS_FILE and (
            self.file_vocabulary is None
            or load_vocabulary(self.file_vocabulary).names == vocabulary.names
        ):
            return load_embeddings_file(text.EMBEDDINGS_FILE, vocabulary, embed_dim)
        model, tokenizer = self._clip()
        emb = get_text_embeddings(
            model,
            tokenizer,
            vocabulary,
            prompts=text.PROMPTS,
            single_prompt=text.SINGLE_PROMPT,
            average_synonyms=text.AVERAGE_SYNONYMS,
            batch_size=text.BATCH_SIZE,
            # random weights (no PRETRAINED) differ on every build: caching them would only add
            # a file per run, never a hit
            cache_dir=(text.CACHE_DIR or None) if self.cfg.MODEL.OVD.CLIP.PRETRAINED else "",
        )
        if embed_dim is not None and emb.shape[1] != embed_dim:
            raise ValueError(
                f"CLIP model {self.cfg.MODEL.OVD.CLIP.MODEL_NAME!r} gives {emb.shape[1]}-d text "
                f"embeddings but the detector head expects {embed_dim}-d (vocabulary "
                f"{vocabulary.source!r}). Use the CLIP model the head was built for."
            )
        return emb


def text_embeddings_from_config(cfg, vocabulary, embed_dim: Optional[int] = None) -> torch.Tensor:
    """Class embeddings for ``vocabulary`` as the config asks: from
    ``MODEL.OVD.TEXT.EMBEDDINGS_FILE`` if set, else encoded (and cached) with the CLIP model of
    ``MODEL.OVD.CLIP``.

    Returns:
        (K, D) float32 tensor, rows L2-normalised.
    """
    return VocabularyEncoder(cfg)(vocabulary, embed_dim)
