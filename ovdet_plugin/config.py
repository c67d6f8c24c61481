"""`add_ovdet_config`: every configuration key the plugin adds to Detectron2's config.

Each key carries a comment; where a key is a paper's symbol or hyperparameter, the comment names it
(see ../shared/docs/METHODS.md for the facts and their sources). Keys live under ``MODEL.OVD`` so
that they never collide with Detectron2's own.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_ovdet_config"]


def add_ovdet_config(cfg: CN) -> CN:
    """Add the ovdet keys (with their defaults) to ``cfg`` in place, and return it.

    Calling it twice is harmless. Unknown keys in a YAML merged afterwards still fail with
    Detectron2's usual ``KeyError: 'Non-existent config key: ...'``.
    """
    _add_clip_config(cfg)
    _add_vocabulary_config(cfg)
    _add_text_config(cfg)
    return cfg


def _add_clip_config(cfg: CN) -> None:
    """The CLIP model (open_clip) that provides text embeddings and, for some methods, vision."""
    _C = cfg
    _C.MODEL.OVD = _C.MODEL.get("OVD", CN())
    _C.MODEL.OVD.CLIP = CN()
    # open_clip architecture name, e.g. "ViT-B-32" (ViLD's teacher, METHODS 1.2), "RN50" (F-VLM),
    # "ViT-B-16", "EVA02-B-16", or the tiny test models shipped with the plugin ("ovdet-tiny-vit").
    _C.MODEL.OVD.CLIP.MODEL_NAME = "ViT-B-32"
    # Weights: an open_clip pretrained tag (e.g. "openai", "laion2b_s34b_b79k"; downloaded from a hub,
    # needs internet), a local checkpoint file (OpenAI .pt archive or open_clip state dict), or ""
    # for random initialisation (tests only).
    _C.MODEL.OVD.CLIP.PRETRAINED = ""


def _add_vocabulary_config(cfg: CN) -> None:
    """Which classes the detector knows in training and at test time."""
    _C = cfg
    # Training vocabulary: "lvis" (LVIS v1, 1203 classes; base = frequent + common, novel = rare),
    # "coco" (80 classes, OV-COCO 48 base / 17 novel flags), "coco_ov" (the 65 classes of the
    # OV-COCO split), a path to a .txt (one class per line) or .json (LVIS/COCO "categories") file,
    # or a comma-separated list "cat, remote control, sofa" (custom classes are novel).
    _C.MODEL.OVD.TRAIN_VOCABULARY = "lvis"
    # Test-time vocabulary in the same syntax; "" means the training vocabulary.
    _C.MODEL.OVD.TEST_VOCABULARY = ""


def _add_text_config(cfg: CN) -> None:
    """How class names become classifier weights (text embeddings)."""
    _C = cfg
    _C.MODEL.OVD.TEXT = CN()
    # Prompt ensemble: "vild" (ViLD's 63 templates with "This is" prefix, METHODS 1.2), "clip"
    # (CLIP's 80 ImageNet templates, used by F-VLM, METHODS 2.2) or "single" (SINGLE_PROMPT only).
    _C.MODEL.OVD.TEXT.PROMPTS = "vild"
    # The template used when PROMPTS is "single"; "{}" is replaced by the class name.
    _C.MODEL.OVD.TEXT.SINGLE_PROMPT = "a photo of a {}."
    # Average the prompt embeddings over a class's synonyms too (LVIS synonyms; ViLD's released
    # LVIS embeddings "clip_synonym_prompt.npy" suggest this, METHODS 1.2 [paper†]).
    _C.MODEL.OVD.TEXT.AVERAGE_SYNONYMS = False
    # A precomputed embedding file (.npy or .pt, shape (K, D) or (D, K)) used instead of encoding the
    # vocabulary, e.g. one written by tools/dump_text_embeddings.py. "" encodes with MODEL.OVD.CLIP.
    _C.MODEL.OVD.TEXT.EMBEDDINGS_FILE = ""
    # Where encoded vocabularies are cached; "" means $OVDET_CACHE or ~/.cache/ovdet.
    _C.MODEL.OVD.TEXT.CACHE_DIR = ""
    # Number of prompts encoded per text-tower forward pass.
    _C.MODEL.OVD.TEXT.BATCH_SIZE = 256
