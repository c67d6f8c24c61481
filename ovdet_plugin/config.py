"""`add_ovdet_config`: every configuration key the plugin adds to Detectron2's config.

Each key carries a comment; where a key is a paper's symbol or hyperparameter, the comment names it.
"methods §x.y" is section x.y of the project's docs/methods.md (the facts and their official
sources). Keys live under ``MODEL.OVD`` so that they never collide with Detectron2's own.
"""

from detectron2.config import CfgNode as CN

__all__ = ["add_ovdet_config", "get_ovdet_cfg", "require_ovdet_config"]

# The fix for a config without the ovdet keys, named wherever one is met.
ADD_CONFIG_HINT = (
    "Call ovdet_plugin.add_ovdet_config(cfg) right after cfg = get_cfg() and before "
    "cfg.merge_from_file(...), or build the config with ovdet_plugin.get_ovdet_cfg(yaml_path)."
)


def add_ovdet_config(cfg: CN) -> CN:
    """Add the ovdet keys (with their defaults) to ``cfg`` in place, and return it.

    Calling it twice is harmless. Unknown keys in a YAML merged afterwards still fail with
    Detectron2's usual ``KeyError: 'Non-existent config key: ...'``.
    """
    if "OVD" in cfg.MODEL:  # called before: add only the missing keys, keep every value set
        _merge_missing(cfg, add_ovdet_config(CN({"MODEL": CN()})))
        return cfg
    _add_clip_config(cfg)
    _add_vocabulary_config(cfg)
    _add_text_config(cfg)
    _add_roi_heads_config(cfg)
    _add_backbone_config(cfg)
    _add_pretraining_config(cfg)
    _add_proposal_config(cfg)
    _add_checkpoint_config(cfg)
    _add_datasets_config(cfg)
    return cfg


def _merge_missing(cfg: CN, defaults: CN) -> None:
    """Copy into ``cfg`` the keys of ``defaults`` it lacks (recursively), never overwriting."""
    for key, value in defaults.items():
        if key not in cfg:
            cfg[key] = value
        elif isinstance(value, CN) and isinstance(cfg[key], CN):
            _merge_missing(cfg[key], value)


def require_ovdet_config(cfg: CN, user: str = "ovdet_plugin") -> None:
    """Raise ``KeyError`` naming the fix when ``cfg`` lacks the ``MODEL.OVD`` keys (a plain
    Detectron2 ``get_cfg()``), instead of a bare ``AttributeError: OVD`` deep inside."""
    if "OVD" not in cfg.get("MODEL", {}):
        raise KeyError(
            f"{user} was given a config without the ovdet keys (no MODEL.OVD). {ADD_CONFIG_HINT}"
        )


def get_ovdet_cfg(config_file: str = "", opts=()) -> CN:
    """Detectron2's default config + the ovdet keys, then ``config_file`` (if any) and the
    ``KEY VALUE`` overrides ``opts``. Not frozen."""
    from detectron2.config import get_cfg

    cfg = add_ovdet_config(get_cfg())
    if config_file:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def _rename_key(cfg: CN, old: str, new: str, message: str) -> None:
    """A YAML or override still using ``old`` fails with a message naming ``new`` (Detectron2's
    renamed-key mechanism), instead of "Non-existent config key"."""
    if not cfg.key_is_renamed(old):
        cfg.register_renamed_key(old, new, message)


def _add_clip_config(cfg: CN) -> None:
    """The CLIP model (open_clip) that provides text embeddings and, for some methods, vision."""
    _C = cfg
    _C.MODEL.OVD = _C.MODEL.get("OVD", CN())
    _C.MODEL.OVD.CLIP = CN()
    # open_clip architecture name, e.g. "ViT-B-32" (ViLD's teacher, methods §1.2), "RN50" (F-VLM),
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
    # Prompt ensemble: "vild" (ViLD's 63 templates with "This is" prefix, methods §1.2), "clip"
    # (CLIP's 80 ImageNet templates, used by F-VLM, methods §2.2) or "single" (SINGLE_PROMPT only).
    _C.MODEL.OVD.TEXT.PROMPTS = "vild"
    # The template used when PROMPTS is "single"; "{}" is replaced by the class name.
    _C.MODEL.OVD.TEXT.SINGLE_PROMPT = "a photo of a {}."
    # Average the prompt embeddings over a class's synonyms too (LVIS synonyms; ViLD's released
    # LVIS embeddings "clip_synonym_prompt.npy" suggest this, methods §1.2 [paper†]).
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
    # Background: "learned" (a learnable normalised vector, ViLD, methods §1.2) or "text" (the fixed
    # text embedding of BACKGROUND_PROMPT; F-VLM's precomputed background row, methods §2.2, and
    # F-ViT's "background" class embedding, methods §3.8).
    _C.MODEL.OVD.CLASSIFIER.BACKGROUND = "learned"
    # The class name encoded (with MODEL.OVD.TEXT.PROMPTS) for BACKGROUND "text".
    _C.MODEL.OVD.CLASSIFIER.BACKGROUND_PROMPT = "background"
    # Logit scale T multiplying the cosines: 100 = 1/tau with tau 0.01 (ViLD `temperature`,
    # methods §1.2; F-VLM TEMP 0.01, methods §2.2); 50 for F-ViT (methods §3.8).
    _C.MODEL.OVD.CLASSIFIER.TEMPERATURE = 100.0
    # Learnable temperature: "none" (ViLD), "inverse" (logits = cos * T / t, t init 1, F-VLM,
    # methods §2.2) or "scale" (logits = cos * s, s init T, F-ViT, methods §3.8).
    _C.MODEL.OVD.CLASSIFIER.LEARN_TEMPERATURE = "none"
    # Bias in the projection to the CLIP width (ViLD's project-to-clip has one; F-VLM's is
    # bias-free, methods §2.2).
    _C.MODEL.OVD.CLASSIFIER.PROJECTION_BIAS = True
    # Training-time novel-class logits: "zero" (x 0, ViLD mask_rare, methods §1.3), "neg_inf"
    # (removed from the softmax, F-ViT, methods §3.8) or "none".
    _C.MODEL.OVD.CLASSIFIER.NOVEL_MASK = "zero"
    # Weight of background RoIs in the classification loss (F-VLM 0.9, methods §2.2; F-ViT 0.9 on
    # LVIS, 0.6 on COCO, methods §3.8; ViLD 1.0).
    _C.MODEL.OVD.CLASSIFIER.BACKGROUND_WEIGHT = 1.0

    _C.MODEL.OVD.VILD = CN()
    # Weight w of the ViLD-image L1 distillation loss (0.5 for R50; 1.0/2.0 for R152, methods §1.4).
    _C.MODEL.OVD.VILD.DISTILL_WEIGHT = 0.5
    # Factor on the ViLD-text classification loss when distilling; 0.0 trains ViLD-image alone
    # (the paper's ablation row, methods §1.4). Box regression is kept either way.
    _C.MODEL.OVD.VILD.TEXT_WEIGHT = 1.0
    # Precomputed distillation proposals used per image (max_num_rois, methods §1.4).
    _C.MODEL.OVD.VILD.MAX_PROPOSALS = 300
    # Folder of precomputed proposal embeddings (tools/precompute_vild_embeddings.py); a relative
    # path that does not exist is taken under $DETECTRON2_DATASETS. "" turns ViLD-image off.
    _C.MODEL.OVD.VILD.EMBEDDINGS_DIR = ""
    # (ViLD-ensemble is configuration: VLM_SCORER.NAME "vild_image" (the second, distilled branch)
    # + FUSION.RULE "vild_ensemble" with ALPHA 1/3, BETA 2/3 (lambda = 2/3, Gu et al. Sec. 3.4).)
    _rename_key(
        _C,
        "MODEL.OVD.VILD.ENSEMBLE",
        "MODEL.OVD.VLM_SCORER.NAME",
        message="ViLD-ensemble is now VLM_SCORER.NAME 'vild_image' + FUSION.RULE "
        "'vild_ensemble' (FUSION.ALPHA 1/3, FUSION.BETA 2/3); see configs/lvis/"
        "vild_ensemble_R50_FPN.yaml.",
    )
    _rename_key(
        _C,
        "MODEL.OVD.VILD.ENSEMBLE_WEIGHT",
        "MODEL.OVD.FUSION.BETA",
        message="lambda is FUSION.BETA (novel VLM weight); FUSION.ALPHA = 1 - lambda.",
    )

    _C.MODEL.OVD.FUSION = CN()
    # Test-time fusion with the VLM scorer (MODEL.OVD.VLM_SCORER), a name in FUSION_RULE_REGISTRY:
    # "fvlm" (background from the detector, renormalised; F-VLM task_heads.py), "fvit" (background
    # fused as a base class, no renormalisation; F-ViT fvit_head.py), "vild_ensemble" (background
    # dropped, softmax of the image branch over the classes only; ViLD postprocess_ops.py), a
    # rule you registered, or "" (detector scores only). Checked when the model is built.
    _C.MODEL.OVD.FUSION.RULE = ""
    # VLM weight alpha for base classes (F-VLM base_vlm_weight 0.35, methods §2.4; F-ViT 0.1).
    _C.MODEL.OVD.FUSION.ALPHA = 0.35
    # VLM weight beta for novel classes (F-VLM novel_vlm_weight 0.65; F-ViT 0.6 on LVIS B/16,
    # 0.8 on COCO; ViLD-ensemble lambda 2/3 with ALPHA 1/3). Both weights lie in [0, 1].
    _C.MODEL.OVD.FUSION.BETA = 0.65
    # Scale (> 0) of the VLM cosines before the softmax (F-VLM 1/clip_sim_temp = 100, methods §2.3;
    # F-ViT vlm_temperature 50 on LVIS, 75 on COCO, methods §3.8; ViLD-ensemble: the classifier's
    # temperature, 100). 0 = the loaded CLIP's own learned scale, exp(logit_scale): 100 for
    # OpenAI's CLIP (F-VLM's value), often far less for a CLIP you pretrained yourself.
    _C.MODEL.OVD.FUSION.VLM_TEMPERATURE = 100.0
    # Exponent w of the objectness multiplier sigmoid(objectness)^w (F-VLM objectness_weight 0,
    # methods §2.4; 3.0 with the centerness RPN in DITO / RO-ViT, methods §4.3).
    _C.MODEL.OVD.FUSION.OBJECTNESS_WEIGHT = 0.0
    # Also evaluate every test set with the fusion off (RULE ""), the detector's own scores: the
    # "detector only" ablation of F-VLM and F-ViT, from the same trained model in the
    # same process (OVDTrainer.test), boxes only (the mask head is skipped), into
    # OUTPUT_DIR/detector_only (eval_results.json and the evaluator's files). Needs a RULE.
    _C.MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY = False

    _C.MODEL.OVD.INPUT = CN()
    # Large-scale jitter of the papers' training (OVDDatasetMapper): output size S of the square
    # (1024 for ViLD / F-VLM / F-ViT LVIS, methods §1.8, 2.6, 3.8); 0 keeps Detectron2's INPUT.*
    # resizing.
    _C.MODEL.OVD.INPUT.LSJ_SIZE = 0
    # Range of the random scale factor of the jitter ([0.1, 2.0] in all three papers).
    _C.MODEL.OVD.INPUT.LSJ_SCALE = [0.1, 2.0]
    # Training images that cannot be read when their turn comes (deleted, unreadable or corrupt
    # since the dataset was loaded) are skipped with a warning naming each file; the run stops
    # with the file named once more than this many were skipped in one loader process.
    # 0 stops at the first one (Detectron2's own behaviour, with the file named).
    _C.MODEL.OVD.INPUT.MAX_UNREADABLE_IMAGES = 10

    _C.MODEL.OVD.SOLVER = CN()
    # Optimizer of tools/train_net.py (OVDTrainer): "SGD" (ViLD, F-VLM, methods §1.8, 2.6) or
    # "AdamW" (F-ViT, methods §3.8). Learning rate, weight decay, schedule and clipping are
    # Detectron2's SOLVER.* keys; learnable temperatures are never weight-decayed (methods §2.2).
    _C.MODEL.OVD.SOLVER.OPTIMIZER = "SGD"
    # AdamW betas of every AdamW in the plugin: OVDTrainer with OPTIMIZER "AdamW" and the RO-ViT /
    # CLIPSelf pretraining tools (CLIPSelf/F-ViT: 0.9, 0.999, methods §3.7).
    _C.MODEL.OVD.SOLVER.BETAS = [0.9, 0.999]
    # SGD or AdamW as torch's fused kernel (``fused=True``, CPU and CUDA): the same update in one
    # kernel per step. False: torch's default implementation. On the generated-data detector
    # (AdamW, 2-core CPU) an iteration was 7% faster (benchmarks/RESULTS.md).
    _C.MODEL.OVD.SOLVER.FUSED = False


def _add_backbone_config(cfg: CN) -> None:
    """CLIP vision backbones and the VLM region scorers (methods §2.1, 2.3, 3.1-3.2, 3.8,
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
    # train_vision_model=False, methods §2.1; F-ViT, methods §3.8). False fine-tunes it (RO-ViT,
    # methods §4.3).
    # BatchNorm of the CLIP ResNet is always frozen (running statistics, methods §2.1).
    _C.MODEL.OVD.BACKBONE.FREEZE = True
    # CLIP ResNet stages returned to the FPN (C2-C5 = res2..res5, methods §2.1). The FPN itself
    # uses MODEL.FPN.IN_FEATURES / OUT_CHANNELS / NORM / FUSE_TYPE and adds P6 by max-pooling.
    _C.MODEL.OVD.BACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    # ViT blocks that feed the simple feature pyramid, one per SFP_SCALE_FACTORS entry (F-ViT taps
    # [3, 5, 7, 11] for B/16, [6, 10, 14, 23] for L/14, methods §3.8) or a single index used by
    # every level (ViTDet). [] means the last block only.
    _C.MODEL.OVD.BACKBONE.VIT_OUT_INDICES = []
    # Run the last ViT block value-only (CLIPSelf forward_without_attn, methods §3.1), as F-ViT's
    # backbone does (methods §3.8). False runs open_clip's block unchanged (RO-ViT).
    _C.MODEL.OVD.BACKBONE.VIT_VALUE_ONLY_LAST_BLOCK = False
    # Stride of the ViT map handed to the pyramid; 0 = the patch size. A patch size that is not a
    # power of two (L/14) needs 16 here: the map is resampled bilinearly to the stride-16 grid,
    # so Detectron2's integer, log2-contiguous strides hold (F-ViT's L/14 levels are 3.5..28).
    _C.MODEL.OVD.BACKBONE.VIT_FEATURE_STRIDE = 0
    # Simple feature pyramid scale factors relative to the ViT map (ViTDet / F-ViT: 4, 2, 1, 0.5
    # -> strides 4..32 for patch 16, methods §3.8, 4.3). Outputs p<log2 stride> plus a max-pooled
    # extra level; the pyramid's channels are MODEL.FPN.OUT_CHANNELS.
    _C.MODEL.OVD.BACKBONE.SFP_SCALE_FACTORS = [4.0, 2.0, 1.0, 0.5]
    # Norm inside the pyramid ("LN" as ViTDet / RO-ViT's SimpleFpnV2, methods §4.3; "" for none).
    _C.MODEL.OVD.BACKBONE.SFP_NORM = "LN"
    # Pad every input to this square size (ViTDet's large-scale-jitter recipe); 0 = no square pad.
    _C.MODEL.OVD.BACKBONE.SFP_SQUARE_PAD = 0
    # Window attention for large inputs: window size in patches (ViTDet-B: 14; RO-ViT / DITO:
    # 16x16-token windows, methods §4.3); 0 = global attention in every block.
    _C.MODEL.OVD.BACKBONE.WINDOW_SIZE = 0
    # Blocks that use window attention when WINDOW_SIZE > 0 (ViTDet-B: 0,1,3,4,6,7,9,10; the rest
    # stay global, e.g. four global blocks in ViT-L, methods §4.3).
    _C.MODEL.OVD.BACKBONE.WINDOW_BLOCK_INDEXES = []
    # Layer-wise learning-rate decay for a fine-tuned ViT (RO-ViT / ViTDet style): block i gets
    # lr * rate^(L - i); 1.0 = none. Pass ovdet_plugin.modeling.backbone.get_vit_lr_decay_rate
    # to detectron2's get_default_optimizer_params(lr_factor_func=...).
    _C.MODEL.OVD.BACKBONE.LR_DECAY_RATE = 1.0

    _C.MODEL.OVD.VLM_SCORER = CN()
    # VLM region scorer, a name in VLM_SCORER_REGISTRY: "attnpool" (CLIP ResNet: RoIAlign on frozen
    # C5 + CLIP attention pool, F-VLM, methods §2.3), "dense" (CLIP ViT: 1x1 RoIAlign on the
    # CLIPSelf dense map, methods §3.2/3.8), "avgpool" (CLIP ViT: RoIAlign + mean on the last map,
    # RO-ViT, methods §4.3), "vild_image" (ViLD-ensemble's second, distilled branch, methods §1.6),
    # a scorer you registered, or "" for none.
    _C.MODEL.OVD.VLM_SCORER.NAME = ""
    # RoIAlign output size; 0 = the method's value: attention-pool grid for "attnpool" (7 for
    # RN50 at 224, methods §2.3), 1 for "dense" (methods §3.2), 14 for "avgpool" (methods §4.3).
    _C.MODEL.OVD.VLM_SCORER.POOLER_RESOLUTION = 0
    # How boxes are cropped: "official" = each method's official code: F-VLM / RO-ViT one sample
    # per bin, no half-pixel shift (fvlm multilevel_crop_and_resize = torchvision roi_align
    # aligned=False, sampling_ratio=1), CLIPSelf aligned=True with adaptive sampling; "detectron2"
    # = Detectron2's ROIAlignV2 (aligned=True, POOLER_SAMPLING_RATIO) for every scorer.
    _C.MODEL.OVD.VLM_SCORER.CROP_CONVENTION = "official"
    # RoIAlign sampling ratio with CROP_CONVENTION "detectron2" (torchvision; <= 0 = adaptive).
    _C.MODEL.OVD.VLM_SCORER.POOLER_SAMPLING_RATIO = -1
    # Where the regions are cropped. "res5" = the scorer's own map (the papers): C5 (stride 32) at
    # the attention-pool grid for "attnpool" (F-VLM), the last block's map for the ViT scorers.
    # "res4" ("attnpool" only) = RoIAlign on C4 (stride 16) at twice the grid, the frozen last
    # stage (layer4) on each crop, then the attention pool (RegionCLIP's region feature).
    # "image" (every tower scorer) = each region's pixels cropped (IMAGE_CROP_SCALES), resized to
    # the tower's input size and run through the whole tower, its map pooled by the scorer's own
    # rule (ViLD's "CLIP on cropped regions"). res4 and image depart from the papers, for small
    # inputs or towers whose maps lose a region's class.
    _C.MODEL.OVD.VLM_SCORER.CROP_STAGE = "res5"
    # CROP_STAGE "image": the box enlargements (about the centre, not clipped) whose crops'
    # normalised embeddings are summed; ViLD's 1x + 1.5x ensemble (methods §1.5).
    _C.MODEL.OVD.VLM_SCORER.IMAGE_CROP_SCALES = [1.0, 1.5]
    # The scorer reads the detector's own frozen CLIP tower (F-VLM's single frozen backbone:
    # the backbone hands its C5 / last ViT map to the scorer, no second forward, no second copy).
    # It takes a frozen copy of the pretrained tower by itself when the backbone trains (RO-ViT
    # use_frozen_vlm, methods §4.3; a fine-tuned F-ViT). True forces that copy even for a frozen
    # backbone.
    _C.MODEL.OVD.VLM_SCORER.FROZEN_COPY = False
    # ViT scorers only ("dense", "avgpool"): 0 = run the tower on the whole image (the papers);
    # N > 0 = run it on N x N-pixel windows and average the overlapping maps, each token seeing
    # only its window at the size a small tower was pretrained at. A departure from the papers,
    # for towers pretrained on small images (the generated-data benchmark's RO-ViT: 64).
    _C.MODEL.OVD.VLM_SCORER.TOWER_WINDOW = 0
    # Pixels between windows with TOWER_WINDOW > 0; 0 = half the window.
    _C.MODEL.OVD.VLM_SCORER.TOWER_WINDOW_STRIDE = 0
    # How a ViT scorer runs the tower's last block: "default" = the scorer's paper ("dense":
    # value-only, CLIPSelf; "avgpool": with attention, RO-ViT), "value_only" or "attention".
    # Set it as the CLIPSelf student was trained (MODEL.OVD.CLIPSELF.VALUE_ONLY_LAST_BLOCK).
    _C.MODEL.OVD.VLM_SCORER.LAST_BLOCK = "default"


def _add_pretraining_config(cfg: CN) -> None:
    """Region-aware training of the VLM: RO-ViT image-text pretraining (methods §4.1-4.2,
    ``tools/pretrain_rovit.py``) and CLIPSelf self-distillation (methods §3.1-3.7,
    ``tools/train_clipself.py``). Both train the open_clip model MODEL.OVD.CLIP.MODEL_NAME /
    PRETRAINED and use Detectron2's SOLVER.* (BASE_LR, WEIGHT_DECAY, MAX_ITER, IMS_PER_BATCH =
    global batch, LR_SCHEDULER_NAME, WARMUP_ITERS, CHECKPOINT_PERIOD), DATALOADER.NUM_WORKERS,
    SEED and OUTPUT_DIR; the optimiser is AdamW with MODEL.OVD.SOLVER.BETAS.
    """
    _C = cfg
    _C.MODEL.OVD.PRETRAIN = CN()
    # The optimiser is AdamW with MODEL.OVD.SOLVER.BETAS (the one BETAS key; CLIPSelf: (0.9,
    # 0.999), methods §3.7). Weight decay SOLVER.WEIGHT_DECAY (0.1) applies to matrices only: none
    # on gains, biases or logit_scale (methods §3.7). See ovdet_plugin.engine.optimizer.
    _rename_key(
        _C,
        "MODEL.OVD.PRETRAIN.BETAS",
        "MODEL.OVD.SOLVER.BETAS",
        "The detection trainer and the pretraining tools share one AdamW betas key: replace "
        "MODEL.OVD.PRETRAIN.BETAS by MODEL.OVD.SOLVER.BETAS (same value).",
    )
    # Clip the gradient norm to this value; 0 = off.
    _C.MODEL.OVD.PRETRAIN.CLIP_GRAD_NORM = 0.0
    # Iterations between two console / JSON / tensorboard writes.
    _C.MODEL.OVD.PRETRAIN.LOG_PERIOD = 20

    _C.MODEL.OVD.ROVIT = CN()
    # Cropped positional embedding in training (RO-ViT CPE, methods §4.1). Never used in eval mode.
    _C.MODEL.OVD.ROVIT.CPE = True
    # CPE's `up_pos_emb_size`: the grid the embedding is bilinearly upsampled to (64 = a 1024-px
    # detection image at patch 16, methods §4.1).
    _C.MODEL.OVD.ROVIT.UP_POS_EMB_SIZE = 64
    # CPE crop box: RandomResizedCrop area fraction and aspect (w/h) ranges (methods §4.1).
    _C.MODEL.OVD.ROVIT.CROP_SCALE = (0.1, 1.0)
    # Aspect-ratio range of that box (RandomResizedCrop statistics, methods §4.1: 0.5-2.0).
    _C.MODEL.OVD.ROVIT.CROP_ASPECT = (0.5, 2.0)
    # How the crop is resized: "official" = fvlm cropped_positional_embedding's crop_and_resize,
    # one sample per output cell, no half-pixel shift (torchvision roi_align aligned=False,
    # sampling_ratio=1); "detectron2" = the half-pixel-aligned variant (aligned=True).
    _C.MODEL.OVD.ROVIT.CPE_CROP_CONVENTION = "official"
    # Contrastive loss: "focal" (RO-ViT focal contrastive loss, methods §4.2), "softmax" (CLIP), or
    # "multipos" (softmax with every pair of equal captions in the batch as positives: for caption
    # sets with repeated captions, e.g. short ones over few classes; not in the papers).
    _C.MODEL.OVD.ROVIT.LOSS = "focal"
    # Focal loss alpha (positive weight; negatives 1 - alpha) and gamma (methods §4.2: 0.5, 1.0).
    _C.MODEL.OVD.ROVIT.FOCAL_ALPHA = 0.5
    # Focal loss gamma (focusing exponent; methods §4.2: 1.0; 0 with alpha 0.5 is sigmoid BCE).
    _C.MODEL.OVD.ROVIT.FOCAL_GAMMA = 1.0
    # The focal loss is a sum; "batch" divides it by the global batch size (its
    # loss_normalizing_factor, methods §4.2), "none" keeps the plain sum.
    _C.MODEL.OVD.ROVIT.FOCAL_NORMALIZER = "batch"
    # Start the focal loss with a learnable logit bias of this value and the logit scale at
    # LOGIT_SCALE_INIT (SigLIP's -10 and 10; methods §4.2). open_clip's CLIP models have no bias:
    # a randomly initialised one with the focal loss and no bias stays on a plateau where the
    # negatives dominate (measured on the generated data). 0.0 = no bias (a model's own, e.g. a
    # SigLIP checkpoint's, is kept).
    _C.MODEL.OVD.ROVIT.LOGIT_BIAS_INIT = 0.0
    # Initial logit scale (multiplier, not its log) when training from scratch; 0.0 keeps the
    # model's (open_clip: 1 / 0.07).
    _C.MODEL.OVD.ROVIT.LOGIT_SCALE_INIT = 0.0
    # Image embedding: "cls" (the tower's own pooling: class token or attention pool) or "gap"
    # (global average pooling of patch tokens, then ln_post and proj; RO-ViT, methods §4.3).
    _C.MODEL.OVD.ROVIT.POOLING = "gap"
    # Compute the loss over the batch of every DDP rank (all-gathered features), as CLIP does.
    _C.MODEL.OVD.ROVIT.GATHER_FEATURES = True
    # Training data: image-caption list(s) (.csv with columns path/filepath/image and
    # caption/text/title, or .jsonl with the same keys), comma-separated ...
    _C.MODEL.OVD.ROVIT.CAPTION_FILES = ""
    # ... relative image paths are joined to this folder ("" = the list file's folder) ...
    _C.MODEL.OVD.ROVIT.IMAGE_ROOT = ""
    # ... and/or webdataset tar shards ("data/shard-{000000..000127}.tar", a glob, or a
    # comma-separated list); samples are <key>.jpg|png|webp + <key>.txt|json.
    _C.MODEL.OVD.ROVIT.SHARDS = ""
    # Training image size (square resize + centre crop); 0 = the tower's native size.
    _C.MODEL.OVD.ROVIT.IMAGE_SIZE = 0

    _C.MODEL.OVD.CLIPSELF = CN()
    # Student input: long side resized to this, padded bottom-right to a square (1024 for B/16,
    # 896 for L/14, methods §3.3 / 3.7).
    _C.MODEL.OVD.CLIPSELF.IMAGE_SIZE = 1024
    # Grid sampling: m x n with m <= MAX_SPLIT and aspect 1:2-2:1 (`_init_choices(max_split=6)`,
    # methods §3.4) ...
    _C.MODEL.OVD.CLIPSELF.MAX_SPLIT = 6
    # ... keeping at most this many cells (or proposals) per image (`max_boxes` 20, methods §3.4).
    _C.MODEL.OVD.CLIPSELF.MAX_BOXES = 20
    # Saved weights are alpha * student + (1 - alpha) * teacher (`--alpha`: 0.7 for B/16, 0.95 for
    # L/14, methods §3.7). 1.0 saves the student unchanged.
    _C.MODEL.OVD.CLIPSELF.ALPHA_ENSEMBLE = 0.7
    # Number of last transformer blocks trained (`lock_image_tower(unlocked_groups)`); -1 = all
    # blocks (12 of B/16, 24 of L/14, methods §3.6). Patch/positional/class embeddings, ln_post,
    # proj and the text tower always stay frozen (methods §3.6).
    _C.MODEL.OVD.CLIPSELF.TRAIN_BLOCKS = -1
    # Region source: "grid" (image patches, `GridDistillDataset`), "proposals" (boxes from
    # PROPOSALS_FILE, `ProposalDistillDataset`, methods §3.4) or "annotations" (the annotated
    # boxes of DATASETS.TRAIN, labels unused: base-class boxes in place of a base-trained RPN's
    # proposals).
    _C.MODEL.OVD.CLIPSELF.MODE = "grid"
    # Teacher crop = the region enlarged this much about its centre (1.0 for grid cells, 1.5 for
    # proposals; the student RoI stays the tight box, methods §3.4). -1 = the mode's default.
    _C.MODEL.OVD.CLIPSELF.TEACHER_CROP_SCALE = -1.0
    # How the teacher crop is resized to the tower's input: "padded" = long side resized, centred
    # zero padding (open_clip ResizeMaxSize, the paper, methods §3.3); "stretched" = resampled to
    # a square by an aligned RoIAlign, the aspect ratio not kept (ViLD's crops, methods §1.5).
    _C.MODEL.OVD.CLIPSELF.TEACHER_CROP_STYLE = "padded"
    # Proposals (MODE "proposals"): JSON, either {"<file name>": [[x0, y0, x1, y1], ...]} or a list
    # of {"file_name": ..., "boxes": [...]}, absolute XYXY pixels of the original image.
    _C.MODEL.OVD.CLIPSELF.PROPOSALS_FILE = ""
    # Proposals kept when min <= sqrt(area) <= max (8 and 1024 px, methods §3.4).
    _C.MODEL.OVD.CLIPSELF.PROPOSAL_SIZE_RANGE = (8.0, 1024.0)
    # Images: DATASETS.TRAIN (any registered Detectron2 dataset; its "file_name"s only, labels are
    # not used, methods §3.4) and/or every image under this folder (recursive).
    _C.MODEL.OVD.CLIPSELF.IMAGE_FOLDER = ""
    # The ensembled CLIP state dict is exported every SOLVER.CHECKPOINT_PERIOD and at the end as
    # OUTPUT_DIR/<EXPORT_NAME>_<iter>.pt and <EXPORT_NAME>_final.pt; it loads with
    # MODEL.OVD.BACKBONE.PRETRAINED: <file> (the F-ViT backbone, same architecture name).
    _C.MODEL.OVD.CLIPSELF.EXPORT_NAME = "clipself"
    # > 0: the student runs on TOWER_WINDOW x TOWER_WINDOW-px windows of its input and their maps
    # are averaged, as the F-ViT scorer does with the same MODEL.OVD.VLM_SCORER.TOWER_WINDOW; set
    # both alike. 0 = the whole image (the paper). A multiple of the patch size.
    _C.MODEL.OVD.CLIPSELF.TOWER_WINDOW = 0
    # Pixels between windows with TOWER_WINDOW > 0; 0 = half the window.
    _C.MODEL.OVD.CLIPSELF.TOWER_WINDOW_STRIDE = 0
    # > 0 adds this weight x an InfoNCE loss over the batch's regions (each student region picks
    # its own teacher crop; not in CLIPSelf, whose loss is the cosine alone): 0 = the paper.
    _C.MODEL.OVD.CLIPSELF.CONTRASTIVE_WEIGHT = 0.0
    # Logit scale of that InfoNCE (student @ teacher.T times this).
    _C.MODEL.OVD.CLIPSELF.CONTRASTIVE_TEMPERATURE = 10.0
    # The student's dense map runs the tower's last block value-only (True: CLIPSelf's map,
    # methods §3.1) or with its attention (False: a 2-block tower keeps a second attention layer);
    # read it alike at test time with MODEL.OVD.VLM_SCORER.LAST_BLOCK.
    _C.MODEL.OVD.CLIPSELF.VALUE_ONLY_LAST_BLOCK = True


def _add_proposal_config(cfg: CN) -> None:
    """Novel-object proposals (RO-ViT / OLN, methods §4.3): MODEL.PROPOSAL_GENERATOR.NAME
    "CenternessRPN" instead of Detectron2's "RPN". It reads MODEL.RPN.* (IN_FEATURES, HEAD_NAME,
    IOU_THRESHOLDS / IOU_LABELS, BATCH_SIZE_PER_IMAGE, POSITIVE_FRACTION, PRE/POST_NMS_TOPK_*,
    NMS_THRESH, LOSS_WEIGHT) and MODEL.ANCHOR_GENERATOR.SIZES, with one anchor per location
    (MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS [[1.0]], methods §4.3).
    """
    _C = cfg
    _C.MODEL.OVD.CENTERNESS_RPN = CN()
    # Weight of the box IoU loss on left/right/top/bottom distances (`RpnBoxIoULoss`, weight 8.0 in
    # DITO, methods §4.3).
    _C.MODEL.OVD.CENTERNESS_RPN.IOU_LOSS_WEIGHT = 8.0
    # "iou" (1 - IoU) or "giou" (1 - generalised IoU).
    _C.MODEL.OVD.CENTERNESS_RPN.IOU_LOSS_TYPE = "iou"
    # Weight of the centerness objectness loss (L1 on the sigmoid, `RpnCenterLoss`, methods §4.3).
    _C.MODEL.OVD.CENTERNESS_RPN.CENTERNESS_LOSS_WEIGHT = 1.0
    # Train the objectness on sampled negative anchors too (target 0). False is OLN's positives-
    # only localisation-quality training [paper†].
    _C.MODEL.OVD.CENTERNESS_RPN.NEGATIVES_IN_OBJECTNESS = True
    # (The ROI heads' final-score rescaling by objectness^w is MODEL.OVD.FUSION.OBJECTNESS_WEIGHT.)


def _add_checkpoint_config(cfg: CN) -> None:
    """How training runs keep their checkpoints (tools/train_net.py, RO-ViT and CLIPSelf)."""
    _C = cfg
    _C.MODEL.OVD.CHECKPOINT = CN()
    # Keep only the newest N periodic checkpoints (model_XXXXXXX.pth) in OUTPUT_DIR; older ones
    # are deleted after each save. model_final.pth is always kept. 0 keeps every checkpoint.
    _C.MODEL.OVD.CHECKPOINT.MAX_TO_KEEP = 3


def _add_datasets_config(cfg: CN) -> None:
    """Your own datasets, registered by every tool (in every ``launch`` worker) without Python."""
    _C = cfg
    # Datasets to register before anything else, one spec string each (README "Train on your own
    # data"): "name=NAME,format=coco|lvis,json=FILE,images=FOLDER[,base_only=true]
    # [,novel=cat;dog][,split=FILE]". novel=/split= give a COCO-format file's novel classes (all
    # others are base); an LVIS-format file's categories carry their own split. Relative paths
    # that do not exist are taken under $DETECTRON2_DATASETS. The tools' --register-dataset SPEC
    # flag appends to this list. Use the names in DATASETS.TRAIN / DATASETS.TEST and in
    # MODEL.OVD.TRAIN_VOCABULARY "dataset:NAME".
    _C.MODEL.OVD.CUSTOM_DATASETS = []
