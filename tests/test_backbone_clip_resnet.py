"""Frozen CLIP ResNet + FPN backbone (F-VLM, methods §2.1)."""

import copy

import pytest
import torch
from conftest import detection_batch, load_test_config, randomize_bn
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.utils.events import EventStorage

from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.modeling.backbone import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, CLIPResNet


def _cfg(**overrides):
    return load_test_config("tiny_clip_rn_fpn", **overrides)


def test_registered_and_base_config_uses_clip_normalisation():
    assert "build_clip_resnet_fpn_backbone" in BACKBONE_REGISTRY
    assert "build_clip_resnet_backbone" in BACKBONE_REGISTRY
    cfg = _cfg()
    assert cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.PIXEL_MEAN == pytest.approx(list(CLIP_PIXEL_MEAN))
    assert cfg.MODEL.PIXEL_STD == pytest.approx(list(CLIP_PIXEL_STD))


def test_output_shape_and_forward():
    cfg = _cfg()
    backbone = build_backbone(cfg)
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
        "p6": 64,
    }
    assert all(v.channels == 16 for v in shapes.values())
    assert backbone.size_divisibility == 32
    bottom = backbone.bottom_up
    assert isinstance(bottom, CLIPResNet)
    # tiny-rn: width 8 -> res2..res5 channels 32, 64, 128, 256
    assert {k: (v.channels, v.stride) for k, v in bottom.output_shape().items()} == {
        "res2": (32, 4),
        "res3": (64, 8),
        "res4": (128, 16),
        "res5": (256, 32),
    }
    out = backbone(torch.randn(1, 3, 96, 128))
    for name, shape in shapes.items():
        assert out[name].shape == (1, 16, -(-96 // shape.stride), -(-128 // shape.stride)), name
    only = build_backbone(_cfg(**{"MODEL.BACKBONE.NAME": "build_clip_resnet_backbone"}))
    assert set(only.output_shape()) == {"res2", "res3", "res4", "res5"}


def test_stages_equal_open_clip_and_bn_frozen():
    torch.manual_seed(0)
    model = build_clip_model("ovdet-tiny-rn")
    randomize_bn(model.visual)
    backbone = CLIPResNet(visual=copy.deepcopy(model.visual), out_features=("res2", "res5"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    x = torch.randn(2, 3, 128, 160)
    with torch.no_grad():
        ref = model.visual.forward_intermediates(x, indices=[1, 4], intermediates_only=True)
    out = backbone(x)
    torch.testing.assert_close(out["res2"], ref["image_intermediates"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["res5"], ref["image_intermediates"][1], atol=1e-5, rtol=1e-5)
    assert out["res5"].abs().max() > 0


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_frozen_means_frozen_in_a_training_step():
    cfg = _cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    tower = model.backbone.bottom_up.visual
    assert not tower.training  # eval mode even in training
    before = _snapshot(tower)
    fpn_before = {k: v.detach().clone() for k, v in model.backbone.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1,
                          momentum=0.9, weight_decay=1e-2)  # fmt: skip
    with EventStorage(0):
        losses = model(detection_batch())  # non-square, odd-sized input
    sum(losses.values()).backward()
    opt.step()
    for name, p in tower.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    after = _snapshot(tower)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, msg=k)
    changed = [k for k, p in model.backbone.named_parameters() if not torch.equal(p, fpn_before[k])]
    assert changed and all(not k.startswith("bottom_up.") for k in changed)


def test_unfrozen_convs_train_but_bn_stays_frozen():
    cfg = _cfg(**{"MODEL.OVD.BACKBONE.FREEZE": False})
    backbone = build_backbone(cfg)
    backbone.train()
    tower = backbone.bottom_up.visual
    out = backbone(torch.randn(1, 3, 64, 96))
    sum(v.sum() for v in out.values()).backward()
    assert tower.conv1.weight.grad is not None and tower.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in tower.attnpool.parameters())
    assert isinstance(tower.bn1, FrozenBatchNorm2d)


def test_full_detector_train_and_inference_on_odd_input():
    model = build_model(_cfg())
    model.train()
    with EventStorage(0):
        losses = model(detection_batch(77, 103))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 77, 103) * 255}])
    assert out[0]["instances"].image_size == (77, 103)


def test_vit_model_on_resnet_backbone_fails_at_build():
    cfg = _cfg(**{"MODEL.OVD.CLIP.MODEL_NAME": "ovdet-tiny-vit"})
    with pytest.raises(ValueError, match="CLIP ResNet backbone.*VisionTransformer"):
        build_backbone(cfg)
    with pytest.raises(ValueError, match="3-channel"):
        build_backbone(_cfg(), ShapeSpec(channels=1))


def test_mismatched_checkpoint_lists_keys(tmp_path):
    vit = build_clip_model("ovdet-tiny-vit")
    path = str(tmp_path / "vit.pt")
    torch.save(vit.state_dict(), path)
    cfg = _cfg(**{"MODEL.OVD.CLIP.PRETRAINED": path})
    with pytest.raises(RuntimeError, match=r"missing keys \(first: .*unexpected keys \(first:"):
        build_backbone(cfg)


def test_checkpoint_loads_into_backbone(tmp_path):
    torch.manual_seed(7)
    rn = build_clip_model("ovdet-tiny-rn")
    path = str(tmp_path / "rn.pt")
    torch.save(rn.state_dict(), path)
    cfg = _cfg(**{"MODEL.OVD.BACKBONE.CLIP_MODEL_NAME": "ovdet-tiny-rn",
                  "MODEL.OVD.BACKBONE.PRETRAINED": path})  # fmt: skip
    backbone = build_backbone(cfg)
    torch.testing.assert_close(backbone.bottom_up.visual.conv1.weight, rn.visual.conv1.weight)
