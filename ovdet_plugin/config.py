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
    _add_roi_heads_config(cfg)
    _add_backbone_config(cfg)
    return cfg


def _add_clip_config(cfg: CN) -> None:
    """The CLIP model (open_clip) that provides text embeddings and, for some methods, vision."""
    _C = cfg
    _C.MODEL.OVD = _C.MODEL.get("OVD", CN())
    _C.MODEL.OVD.CLIP = CN()
    # open_clip architecture name, e.g. "ViT-B-32" (ViLD's teacher, METHODS 1.2), "RN50" (F-VLM),
    # "ViT-B-16", "EVA02-B-16", or the tiny test models shipped with the plugin ("ovdet-tiny-vit").
    _C.MODEL.OVD.CLIP.MODEL_NAME = "ViT-B-32"
    # Weights: an open_clip pretrained tag (e.g. "openai", "laion2b_s34b_b79k"; downloaded from a
    # hub, needs internet), a local checkpoint file (OpenAI .pt archive or open_clip state dict),
    # or "" for random initialisation (tests only).
    _C.MODEL.OVD.CLIP.PRETRAINED = ""


def _add_vocabulary_config(cfg: CN) -> None:
    """Which classes the detector knows in training and at test time."""
    _C = cfg
    # Training vocabulary: "lvis" (LVIS v1, 1203 classes; base = frequent + common, novel = rare),
    # "coco" (80 classes, OV-COCO 48 base / 17 novel flags), "coco_ov" (the 65 classes of the
    # OV-COCO split), "dataset:NAME" (the classes and flags of a registered dataset), a path to a
    # .txt (one class per line) or .json (LVIS/COCO "categories") file, or a comma-separated list
    # "cat, remote control, sofa" (custom classes are novel).
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
    # A precomputed embedding file (.npy or .pt, shape (K, D) or (D, K)) used instead of encoding
    # the vocabulary, e.g. one written by tools/dump_text_embeddings.py. "" encodes with
    # MODEL.OVD.CLIP.
    _C.MODEL.OVD.TEXT.EMBEDDINGS_FILE = ""
    # Where encoded vocabularies are cached; "" means $OVDET_CACHE or ~/.cache/ovdet.
    _C.MODEL.OVD.TEXT.CACHE_DIR = ""
    # Number of prompts encoded per text-tower forward pass.
    _C.MODEL.OVD.TEXT.BATCH_SIZE = 256


def _add_roi_heads_config(cfg: CN) -> None:
    """Open-vocabulary ROI heads (MODEL.ROI_HEADS.NAME "OVROIHeads" or "ViLDROIHeads"): the
    cosine classifier, ViLD's distillation and ensemble, and test-time VLM score fusion."""
    _C = cfg
    _C.MODEL.OVD.CLASSIFIER = CN()
    # Background: "learned" (a learnable normalised vector, ViLD, METHODS 1.2) or "text" (the fixed
    # text embedding of BACKGROUND_PROMPT; F-VLM's precomputed background row, METHODS 2.2, and
    # F-ViT's "background" class embedding, METHODS 3.8).
    _C.MODEL.OVD.CLASSIFIER.BACKGROUND = "learned"
    # The class name encoded (with MODEL.OVD.TEXT.PROMPTS) for BACKGROUND "text".
    _C.MODEL.OVD.CLASSIFIER.BACKGROUND_PROMPT = "background"
    # Logit scale T multiplying the cosines: 100 = 1/tau with tau 0.01 (ViLD `temperature`,
    # METHODS 1.2; F-VLM TEMP 0.01, METHODS 2.2); 50 for F-ViT (METHODS 3.8).
    _C.MODEL.OVD.CLASSIFIER.TEMPERATURE = 100.0
    # Learnable temperature: "none" (ViLD), "inverse" (logits = cos * T / t, t init 1, F-VLM,
    # METHODS 2.2) or "scale" (logits = cos * s, s init T, F-ViT, METHODS 3.8).
    _C.MODEL.OVD.CLASSIFIER.LEARN_TEMPERATURE = "none"
    # Bias in the projection to the CLIP width (ViLD's project-to-clip has one; F-VLM's is
    # bias-free, METHODS 2.2).
    _C.MODEL.OVD.CLASSIFIER.PROJECTION_BIAS = True
    # Training-time novel-class logits: "zero" (x 0, ViLD mask_rare, METHODS 1.3), "neg_inf"
    # (removed from the softmax, F-ViT, METHODS 3.8) or "none".
    _C.MODEL.OVD.CLASSIFIER.NOVEL_MASK = "zero"
    # Weight of background RoIs in the classification loss (F-VLM 0.9, METHODS 2.2; F-ViT 0.9 on
    # LVIS, 0.6 on COCO, METHODS 3.8; ViLD 1.0).
    _C.MODEL.OVD.CLASSIFIER.BACKGROUND_WEIGHT = 1.0

    _C.MODEL.OVD.VILD = CN()
    # Weight w of the ViLD-image L1 distillation loss (0.5 for R50; 1.0/2.0 for R152, METHODS 1.4).
    _C.MODEL.OVD.VILD.DISTILL_WEIGHT = 0.5
    # Precomputed distillation proposals used per image (max_num_rois, METHODS 1.4).
    _C.MODEL.OVD.VILD.MAX_PROPOSALS = 300
    # Folder of precomputed proposal embeddings (tools/precompute_vild_embeddings.py); a relative
    # path that does not exist is taken under $DETECTRON2_DATASETS. "" turns ViLD-image off.
    _C.MODEL.OVD.VILD.EMBEDDINGS_DIR = ""
    # ViLD-ensemble: second branch for the distillation RoIs + test-time ensemble (METHODS 1.6).
    _C.MODEL.OVD.VILD.ENSEMBLE = False
    # Ensemble weight lambda (2/3: base p_text^(2/3) p_img^(1/3), novel the reverse; METHODS 1.6).
    _C.MODEL.OVD.VILD.ENSEMBLE_WEIGHT = 2.0 / 3

    _C.MODEL.OVD.FUSION = CN()
    # Test-time fusion with the VLM scorer (MODEL.OVD.VLM_SCORER): "fvlm" (background from the
    # detector, renormalised, METHODS 2.4), "fvit" (background fused as a base class, no
    # renormalisation, METHODS 3.8) or "" (detector scores only).
    _C.MODEL.OVD.FUSION.RULE = ""
    # VLM weight alpha for base classes (F-VLM base_vlm_weight 0.35, METHODS 2.4; F-ViT 0.1).
    _C.MODEL.OVD.FUSION.ALPHA = 0.35
    # VLM weight beta for novel classes (F-VLM novel_vlm_weight 0.65; F-ViT 0.6 on LVIS B/16,
    # 0.8 on COCO).
    _C.MODEL.OVD.FUSION.BETA = 0.65
    # Scale of the VLM cosines before the softmax (F-VLM 1/clip_sim_temp = 100, METHODS 2.3;
    # F-ViT vlm_temperature 50 on LVIS, 75 on COCO, METHODS 3.8).
    _C.MODEL.OVD.FUSION.VLM_TEMPERATURE = 100.0
    # Exponent w of the objectness multiplier sigmoid(objectness)^w (F-VLM objectness_weight 0,
    # METHODS 2.4; 3.0 with the centerness RPN in DITO / RO-ViT, METHODS 4.3).
    _C.MODEL.OVD.FUSION.OBJECTNESS_WEIGHT = 0.0

    _C.MODEL.OVD.INPUT = CN()
    # Large-scale jitter of the papers' training (OVDDatasetMapper): output size S of the square
    # (1024 for ViLD / F-VLM / F-ViT LVIS, METHODS 1.8, 2.6, 3.8); 0 keeps Detectron2's INPUT.*
    # resizing.
    _C.MODEL.OVD.INPUT.LSJ_SIZE = 0
    # Range of the random scale factor of the jitter ([0.1, 2.0] in all three papers).
    _C.MODEL.OVD.INPUT.LSJ_SCALE = [0.1, 2.0]

    _C.MODEL.OVD.SOLVER = CN()
    # Optimizer of tools/train_net.py (OVDTrainer): "SGD" (ViLD, F-VLM, METHODS 1.8, 2.6) or
    # "AdamW" (F-ViT, METHODS 3.8). Learning rate, weight decay, schedule and clipping are
    # Detectron2's SOLVER.* keys; learnable temperatures are never weight-decayed (METHODS 2.2).
    _C.MODEL.OVD.SOLVER.OPTIMIZER = "SGD"
    # AdamW betas (CLIPSelf/F-ViT: 0.9, 0.999, METHODS 3.7).
    _C.MODEL.OVD.SOLVER.BETAS = [0.9, 0.999]


def _add_backbone_config(cfg: CN) -> None:
    """CLIP vision backbones (issue 3) and the VLM region scorers (METHODS 2.1, 2.3, 3.1-3.2, 3.8,
    4.3). The backbones are chosen with Detectron2's own MODEL.BACKBONE.NAME:
    "build_clip_resnet_fpn_backbone" (F-VLM) or "build_clip_vit_sfp_backbone" (F-ViT, RO-ViT).
    Configs using them set MODEL.PIXEL_MEAN/PIXEL_STD to CLIP's constants x 255 and INPUT.FORMAT
    RGB.
    """
    _C = cfg
    _C.MODEL.OVD.BACKBONE = CN()
    # open_clip architecture of the vision tower ("RN50", "RN50x64", "ViT-B-16", "ViT-L-14",
    # "ovdet-tiny-rn", ...). "" means MODEL.OVD.CLIP.MODEL_NAME (the text model's own tower).
    _C.MODEL.OVD.BACKBONE.CLIP_MODEL_NAME = ""
    # Its weights: pretrained tag, local checkpoint (e.g. a CLIPSelf checkpoint) or "" (random).
    # When CLIP_MODEL_NAME is "", "" here means MODEL.OVD.CLIP.PRETRAINED.
    _C.MODEL.OVD.BACKBONE.PRETRAINED = ""
    # Frozen tower: no gradient, eval mode even in training, run under no_grad (F-VLM
    # train_vision_model=False, METHODS 2.1; F-ViT, METHODS 3.8). False fine-tunes it (RO-ViT 4.3).
    # BatchNorm of the CLIP ResNet is always frozen (running statistics, METHODS 2.1).
    _C.MODEL.OVD.BACKBONE.FREEZE = True
    # CLIP ResNet stages returned to the FPN (C2-C5 = res2..res5, METHODS 2.1). The FPN itself
    # uses MODEL.FPN.IN_FEATURES / OUT_CHANNELS / NORM / FUSE_TYPE and adds P6 by max-pooling.
    _C.MODEL.OVD.BACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # ViT blocks that feed the simple feature pyramid, one per SFP_SCALE_FACTORS entry (F-ViT taps
    # [3, 5, 7, 11] for B/16, [6, 10, 14, 23] for L/14, METHODS 3.8) or a single index used by
    # every level (ViTDet). [] means the last block only.
    _C.MODEL.OVD.BACKBONE.VIT_OUT_INDICES = []
    # Run the last ViT block value-only (CLIPSelf forward_without_attn, METHODS 3.1), as F-ViT's
    # backbone does (METHODS 3.8). False runs open_clip's block unchanged (RO-ViT).
    _C.MODEL.OVD.BACKBONE.VIT_VALUE_ONLY_LAST_BLOCK = False
    # Stride of the ViT map handed to the pyramid; 0 = the patch size. A patch size that is not a
    # power of two (L/14) needs 16 here: the map is resampled bilinearly to the stride-16 grid,
    # so Detectron2's integer, log2-contiguous strides hold (F-ViT's L/14 levels are 3.5..28).
    _C.MODEL.OVD.BACKBONE.VIT_FEATURE_STRIDE = 0
    # Simple feature pyramid scale factors relative to the ViT map (ViTDet / F-ViT: 4, 2, 1, 0.5
    # -> strides 4..32 for patch 16, METHODS 3.8, 4.3). Outputs p<log2 stride> plus a max-pooled
    # extra level; the pyramid's channels are MODEL.FPN.OUT_CHANNELS.
    _C.MODEL.OVD.BACKBONE.SFP_SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    # Norm inside the pyramid ("LN" as ViTDet / RO-ViT's SimpleFpnV2, METHODS 4.3; "" for none).
    _C.MODEL.OVD.BACKBONE.SFP_NORM = "LN"
    # Pad every input to this square size (ViTDet's large-scale-jitter recipe); 0 = no square pad.
    _C.MODEL.OVD.BACKBONE.SFP_SQUARE_PAD = 0
    # Window attention for large inputs: window size in patches (ViTDet-B: 14; RO-ViT / DITO:
    # 16x16-token windows, METHODS 4.3); 0 = global attention in every block.
    _C.MODEL.OVD.BACKBONE.WINDOW_SIZE = 0
    # Blocks that use window attention when WINDOW_SIZE > 0 (ViTDet-B: 0,1,3,4,6,7,9,10; the rest
    # stay global, e.g. four global blocks in ViT-L, METHODS 4.3).
    _C.MODEL.OVD.BACKBONE.WINDOW_BLOCK_INDEXES = []
    # Layer-wise learning-rate decay for a fine-tuned ViT (RO-ViT / ViTDet style): block i gets
    # lr * rate^(L - i); 1.0 = none. Pass ovdet_plugin.modeling.backbone.get_vit_lr_decay_rate
    # to detectron2's get_default_optimizer_params(lr_factor_func=...).
    _C.MODEL.OVD.BACKBONE.LR_DECAY_RATE = 1.0

    _C.MODEL.OVD.VLM_SCORER = CN()
    # VLM region scorer: "attnpool" (CLIP ResNet: RoIAlign on frozen C5 + CLIP attention pool,
    # F-VLM, METHODS 2.3), "dense" (CLIP ViT: 1x1 RoIAlign on the CLIPSelf dense map, METHODS
    # 3.2/3.8), "avgpool" (CLIP ViT: RoIAlign + mean on the last map, RO-ViT, METHODS 4.3), or ""
    # for none.
    _C.MODEL.OVD.VLM_SCORER.NAME = ""
    # RoIAlign output size; 0 = the method's value: attention-pool grid for "attnpool" (7 for
    # RN50 at 224, METHODS 2.3 / 6.4), 1 for "dense" (METHODS 3.2), 14 for "avgpool" (METHODS 4.3).
    _C.MODEL.OVD.VLM_SCORER.POOLER_RESOLUTION = 0
    # RoIAlign sampling ratio (torchvision; <= 0 = adaptive, CLIPSelf uses -1, METHODS 3.2).
    _C.MODEL.OVD.VLM_SCORER.POOLER_SAMPLING_RATIO = -1
    # Score regions with a frozen copy of the CLIP tower taken at build time, so the detector's
    # backbone may be fine-tuned (RO-ViT use_frozen_vlm, METHODS 4.3). False shares the backbone's
    # tower (only sensible when MODEL.OVD.BACKBONE.FREEZE, as in F-VLM / F-ViT).
    _C.MODEL.OVD.VLM_SCORER.FROZEN_COPY = True
