"""LazyConfig (configs/lazy/*.py): each instantiates, with tiny overrides, the same model as its
YAML paper config (same state-dict keys and shapes), trains a step and predicts; the VLM scorer
shares the frozen CLIP tower of the backbone, as in the YAML path."""

import os

import pytest
import torch
from batches import detection_batch
from conftest import REPO_ROOT
from detectron2.config import LazyConfig, instantiate
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import ovdet_plugin.lazy
from ovdet_plugin.config import get_ovdet_cfg
from ovdet_plugin.modeling.meta_arch import BackbonePart, OVDetGeneralizedRCNN

TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.OVD.CLIP.PRETRAINED", "",
    "MODEL.OVD.TRAIN_VOCABULARY", "coco",  # base classes: F-ViT/F-VLM mask the novel ones
    "MODEL.OVD.TEXT.PROMPTS", "single",
    "MODEL.FPN.OUT_CHANNELS", "16",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "20",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_BOX_HEAD.NUM_CONV", "1", "MODEL.ROI_BOX_HEAD.CONV_DIM", "16",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ROI_MASK_HEAD.NUM_CONV", "1", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16",
    "TEST.DETECTIONS_PER_IMAGE", "10",
]  # fmt: skip
CASES = {
    "fvlm_RN50_FPN": ["MODEL.OVD.CLIP.MODEL_NAME", "ovdet-tiny-rn"],
    "fvit_B16_clipself": [
        "MODEL.OVD.CLIP.MODEL_NAME", "ovdet-tiny-vit16",
        "MODEL.OVD.BACKBONE.VIT_OUT_INDICES", "[0, 1, 1, 2]",
    ],
    "vild_R50_FPN": [
        "MODEL.OVD.CLIP.MODEL_NAME", "ovdet-tiny-vit",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FPN.NORM", "",
        "MODEL.ROI_BOX_HEAD.NORM", "", "MODEL.ROI_MASK_HEAD.NORM", "",
    ],
}  # fmt: skip


def shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lazy_config_builds_the_yaml_model(name, one_torch_thread):
    opts = TINY + CASES[name]
    lazy = LazyConfig.load(os.path.join(REPO_ROOT, "configs", "lazy", f"{name}.py"))
    assert lazy.model.roi_heads._target_ is BackbonePart
    lazy.ovd.opts = opts
    torch.manual_seed(0)
    model = instantiate(lazy.model)
    assert isinstance(model, OVDetGeneralizedRCNN)

    yaml_cfg = get_ovdet_cfg(os.path.join(REPO_ROOT, "configs", "lvis", f"{name}.yaml"), opts)
    torch.manual_seed(0)
    reference = build_model(yaml_cfg)
    assert shapes(model) == shapes(reference)
    assert type(model.roi_heads) is type(reference.roi_heads)
    assert type(model.backbone) is type(reference.backbone)
    assert model.pixel_mean.flatten().tolist() == pytest.approx(list(yaml_cfg.MODEL.PIXEL_MEAN))
    assert model.input_format == yaml_cfg.INPUT.FORMAT
    scorer = model.roi_heads.vlm_scorer
    if name != "vild_R50_FPN":  # one tower: the scorer reads the lazy backbone's own map
        assert scorer.shared and scorer.reads_backbone_map
        trunk = model.backbone.bottom_up if name.startswith("fvlm") else model.backbone.net
        assert scorer.visual is trunk.visual
    else:
        assert scorer is None

    # one training step through the lazy optimizer, then inference
    lazy.optimizer.params.model = model
    optimizer = instantiate(lazy.optimizer)
    model.train()
    data = detection_batch(classes=(0, 2))  # person, car: base
    with EventStorage():
        losses = model(data)
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    after = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    model.eval()
    with torch.no_grad():
        (out,) = model([{k: data[0][k] for k in ("image", "height", "width")}])
    inst = out["instances"]
    assert inst.has("pred_boxes") and inst.has("pred_masks") and len(inst) <= 10
    assert bool(((inst.pred_classes >= 0) & (inst.pred_classes < 80)).all())
    # the schedule of the YAML: warm-up from WARMUP_FACTOR
    multiplier = instantiate(lazy.lr_multiplier)
    assert multiplier(0.0) == pytest.approx(yaml_cfg.SOLVER.WARMUP_FACTOR)
    assert lazy.train.max_iter == yaml_cfg.SOLVER.MAX_ITER
    assert lazy.train.amp.enabled == yaml_cfg.SOLVER.AMP.ENABLED


def test_lazy_part_can_be_replaced():
    """A user's own backbone node: the ROI heads (a BackbonePart) are built on it."""
    lazy = LazyConfig.load(os.path.join(REPO_ROOT, "configs", "lazy", "fvlm_RN50_FPN.py"))
    lazy.ovd.opts = TINY + CASES["fvlm_RN50_FPN"]
    built = {}

    def my_backbone(cfg):
        from detectron2.modeling import build_backbone

        built["backbone"] = build_backbone(cfg)
        return built["backbone"]

    lazy.model.backbone._target_ = my_backbone
    model = instantiate(lazy.model)
    assert model.backbone is built["backbone"]
    assert model.roi_heads.vlm_scorer.visual is built["backbone"].bottom_up.visual


def test_bad_lazy_inputs_name_the_fix():
    with pytest.raises(FileNotFoundError, match="relative to its own file"):
        ovdet_plugin.lazy.yaml_config("lvis/no_such.yaml")
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        ovdet_plugin.lazy.yaml_config(
            os.path.join(REPO_ROOT, "configs", "lvis", "fvlm_RN50_FPN.yaml"), ["MODEL.DEVICE"]
        )
    with pytest.raises(TypeError, match="callable builder"):
        BackbonePart(build="not callable")
    with pytest.raises(ValueError, match="optimizer.params.model is not set"):
        ovdet_plugin.lazy.ovd_optimizer(None, {"model": None})
