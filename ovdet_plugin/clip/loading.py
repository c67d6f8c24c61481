"""Build open_clip models by name, with weights from a pretrained tag or a local checkpoint file.

No CLIP code is written here: models and tokenizers are open_clip's. What this module adds is the
errors a user needs (unknown names with close matches, missing files, an unreachable hub, a
checkpoint that does not fit the architecture) and support for OpenAI's TorchScript ``.pt``
archives as local files.
"""

import contextlib
import difflib
import hashlib
import logging
import os
import zipfile
from typing import Dict, Iterable, List, Optional, Tuple

import open_clip
import torch
from torch import nn

from ..utils.hashing import cached_file_sha256

__all__ = [
    "build_clip_model",
    "clip_embed_dim",
    "clip_image_size",
    "get_clip_tokenizer",
    "load_clip_checkpoint",
    "text_weights_checksum",
    "TINY_MODEL_NAMES",
]

logger = logging.getLogger(__name__)

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "model_configs")
# Tiny architectures shipped with the plugin (for tests and the synthetic benchmark).
TINY_MODEL_NAMES = ("ovdet-tiny-vit", "ovdet-tiny-rn")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")


def _register_tiny_configs() -> None:
    if not all(name in open_clip.list_models() for name in TINY_MODEL_NAMES):
        open_clip.add_model_config(_CONFIG_DIR)


_register_tiny_configs()


def _check_model_name(model_name: str) -> None:
    if model_name.startswith(("hf-hub:", "local-dir:")):
        return
    known = open_clip.list_models()
    if model_name in known:
        return
    lowered = {m.lower(): m for m in known}
    close = [lowered[m] for m in difflib.get_close_matches(model_name.lower(), lowered, n=5)]
    hint = f" Close matches: {close}." if close else ""
    raise ValueError(
        f"Unknown CLIP model name {model_name!r} (MODEL.OVD.CLIP.MODEL_NAME).{hint} "
        "open_clip.list_models() lists all names; the plugin adds "
        f"{list(TINY_MODEL_NAMES)}."
    )


def _looks_like_path(pretrained: str) -> bool:
    return (
        os.path.exists(pretrained) or os.sep in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES)
    )


def _is_torchscript_archive(path: str) -> bool:
    """OpenAI's released CLIP .pt files are TorchScript archives, not plain state dicts."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(name.endswith("constants.pkl") for name in zf.namelist())


def _first(keys: Iterable[str], n: int = 5) -> List[str]:
    return list(keys)[:n]


def load_clip_checkpoint(model: nn.Module, path: str, model_name: str = "?") -> None:
    """Load a local CLIP checkpoint into ``model`` (strictly: every key must match).

    Accepts OpenAI TorchScript archives (``ViT-B-32.pt``) and open_clip / torch state dicts
    (optionally wrapped in ``{"state_dict": ...}`` or prefixed by ``module.``), ``.safetensors``.

    Raises:
        FileNotFoundError: the file does not exist.
        RuntimeError: the file cannot be read, or its keys/shapes do not fit the architecture
            (the message lists the first missing and unexpected keys).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CLIP weight file {path!r} not found (MODEL.OVD.CLIP.PRETRAINED). Pass the path of "
            "an existing local checkpoint (OpenAI .pt or open_clip state dict)."
        )
    try:
        if _is_torchscript_archive(path):
            result = model.load_state_dict(_torchscript_state_dict(path), strict=False)
        else:
            result = open_clip.load_checkpoint(model, path, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
        error = None
    except Exception as e:  # unreadable file, shape mismatches, ...
        error = e
        missing, unexpected = _key_differences(model, path)
    if error is None and not missing and not unexpected:
        return
    keys = (
        f"{len(missing)} missing keys (first: {_first(missing)}), {len(unexpected)} unexpected "
        f"keys (first: {_first(unexpected)})"
    )
    if error is None or missing or unexpected:
        raise RuntimeError(
            f"CLIP checkpoint {path!r} does not match architecture {model_name!r}: {keys}. "
            "Check MODEL.OVD.CLIP.MODEL_NAME."
        ) from error
    raise RuntimeError(
        f"Could not load CLIP checkpoint {path!r} into architecture {model_name!r}: {error}\n"
        "Check that the file is complete and that MODEL.OVD.CLIP.MODEL_NAME names the "
        "architecture it was trained with."
    ) from error


def _torchscript_state_dict(path: str) -> Dict[str, torch.Tensor]:
    state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    # Scalars OpenAI stores beside the weights, and the causal text mask that open_clip keeps as a
    # non-persistent buffer (a traced module saves it as a constant-like entry).
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
        state_dict.pop(key, None)
    return state_dict


def _key_differences(model: nn.Module, path: str) -> Tuple[List[str], List[str]]:
    """(missing, unexpected) keys of a checkpoint file against ``model``; ([], []) when the file
    cannot even be read (the caller then reports the read error)."""
    try:
        if _is_torchscript_archive(path):
            keys = set(_torchscript_state_dict(path))
        else:
            keys = set(open_clip.factory.load_state_dict(path))
    except Exception:
        return [], []
    expected = set(model.state_dict())
    return sorted(expected - keys), sorted(keys - expected)


_LOGGED = set()


def _log_once(level: int, message: str) -> None:
    """Log ``message`` the first time in this process, at DEBUG afterwards: a detector builds the
    same CLIP tower up to three times (backbone, region scorer, text classifier)."""
    logger.log(level if message not in _LOGGED else logging.DEBUG, message)
    _LOGGED.add(message)


class _DropRandomInitWarning(logging.Filter):
    """Drops open_clip's "No pretrained weights loaded ... Model initialized randomly" warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _without_random_init_warning():
    """open_clip warns on the root logger whenever it builds a model without a tag, even when
    the caller loads a checkpoint into it next; build_clip_model logs the truth itself."""
    drop = _DropRandomInitWarning()
    root = logging.getLogger()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


def build_clip_model(
    model_name: str,
    pretrained: str = "",
    *,
    device: str = "cpu",
) -> nn.Module:
    """Build an open_clip model (``open_clip.CLIP`` or ``CustomTextCLIP``) in eval mode.

    Args:
        model_name: an open_clip architecture ("ViT-B-32", "RN50", "EVA02-B-16", ...) or one of
            the plugin's tiny models ("ovdet-tiny-vit", "ovdet-tiny-rn").
        pretrained: "" for random weights; a local checkpoint file; or an open_clip pretrained tag
            ("openai", "laion2b_s34b_b79k", ...), which open_clip downloads from its hub.
        device: where to put the model.
    Returns:
        the model, in eval mode, with ``ovdet_model_name`` and ``ovdet_pretrained`` attributes.
    """
    _check_model_name(model_name)
    pretrained = (pretrained or "").strip()
    if not pretrained:
        with _without_random_init_warning():
            model = open_clip.create_model(model_name, pretrained=None, device=device)
        _log_once(
            logging.WARNING,
            f"CLIP {model_name}: random weights (no pretrained weights given; set "
            "MODEL.OVD.CLIP.PRETRAINED to a checkpoint file or an open_clip tag for real ones)",
        )
    elif _looks_like_path(pretrained):
        with _without_random_init_warning():  # the weights are loaded right below
            model = open_clip.create_model(model_name, pretrained=None, device=device)
        load_clip_checkpoint(model, pretrained, model_name)
        _log_once(
            logging.INFO,
            f"Loaded CLIP weights for {model_name} from {os.path.abspath(pretrained)} "
            f"(SHA-256 {cached_file_sha256(pretrained)[:12]})",
        )
    else:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained not in tags:
            raise ValueError(
                f"Unknown pretrained tag {pretrained!r} for CLIP model {model_name!r} "
                f"(MODEL.OVD.CLIP.PRETRAINED). Known tags: {tags or 'none'}; a path to a local "
                "checkpoint file is accepted too."
            )
        try:
            model = open_clip.create_model(model_name, pretrained=pretrained, device=device)
        except Exception as e:  # hub unreachable, offline mode, interrupted download, ...
            raise RuntimeError(
                f"Could not fetch pretrained weights {pretrained!r} for {model_name!r} from "
                f"open_clip's hub ({type(e).__name__}: {e}). Without internet, download the "
                "checkpoint on another machine and pass its local path as "
                "MODEL.OVD.CLIP.PRETRAINED."
            ) from e
        _log_once(
            logging.INFO,
            f"Loaded CLIP weights for {model_name}: open_clip pretrained tag {pretrained!r}",
        )
    model.eval()
    model.ovdet_model_name = model_name
    model.ovdet_pretrained = pretrained
    return model


def get_clip_tokenizer(model_name: str):
    """open_clip's tokenizer for ``model_name`` (its BPE vocabulary ships with open_clip)."""
    _check_model_name(model_name)
    return open_clip.get_tokenizer(model_name)


def _text_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if not k.startswith("visual.")}


def text_weights_checksum(model: nn.Module) -> str:
    """SHA-256 over the text tower's tensors (every non-``visual.`` entry of the state dict).

    Memoised on the model and recomputed whenever any of those tensors changed in place (tracked
    through the tensors' version counters), so a fine-tuned or reloaded model gets a new checksum.
    """
    state = _text_state(model)
    stamp: Tuple = tuple((k, v.data_ptr(), v._version) for k, v in sorted(state.items()))
    memo = getattr(model, "_ovdet_text_checksum", None)
    if memo is not None and memo[0] == stamp:
        return memo[1]
    h = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu").contiguous().reshape(-1)
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")  # no copy
    digest = h.hexdigest()
    object.__setattr__(model, "_ovdet_text_checksum", (stamp, digest))
    return digest


def clip_image_size(model: nn.Module) -> Tuple[int, int]:
    """(H, W) input size of a CLIP model's image tower (open_clip stores an int or a pair;
    224 when the tower does not say). ``model`` is the CLIP model or its ``visual`` tower."""
    size = getattr(getattr(model, "visual", model), "image_size", 224)
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def clip_embed_dim(model: nn.Module) -> int:
    """Width of the joint image-text embedding space."""
    proj: Optional[torch.Tensor] = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return proj.shape[1]
    if isinstance(proj, nn.Linear):
        return proj.out_features
    return model.text.output_dim  # CustomTextCLIP
