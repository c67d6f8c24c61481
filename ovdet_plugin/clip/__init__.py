"""CLIP side of the plugin: open_clip loading, normalisation constants, box crops encoded by CLIP,
prompts, text classifiers and their cache."""

from .constants import CLIP_MEAN, CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, CLIP_STD  # noqa: F401
from .loading import (  # noqa: F401  (importing registers the tiny model configs)
    TINY_MODEL_NAMES,
    build_clip_model,
    clip_embed_dim,
    clip_image_size,
    get_clip_tokenizer,
    load_clip_checkpoint,
    text_weights_checksum,
)
from .prompts import VILD_TEMPLATES, build_prompts, normalize_class_name  # noqa: F401
