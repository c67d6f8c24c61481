"""CLIP ViT + simple feature pyramid backbone (F-ViT methods §3.8, RO-ViT 4.3)."""

import copy
from functools import partial

import pytest
import torch
from conftest import detection_batch, load_test_config
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.solver.build import get_default_optimizer_params
from detectron2.utils.events import EventStorage

from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.clip.dense import value_only_block_forward
from ovdet_plugin.modeling.backbone import (
    CLIPSimpleFeaturePyramid,
    CLIPViT,
    get_vit_lr_decay_rate,
)


def _cfg(**overrides):
    return load_test_config("tiny_clip_vit_sfp", **overrides)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return build_clip_model("ovdet-tiny-vit")


def test_registered_and_output_shape():
    assert "build_clip_vit_sfp_backbone" in BACKBONE_REGISTRY
    backbone = build_backbone(_cfg())
    assert isinstance(backbone, CLIPSimpleFeaturePyramid) and isinstance(backbone.net, CLIPViT)
    shapes = backbone.output_shape()
    assert {k: (v.channels, v.stride) for k, v in shapes.items()} == {
        "p2": (16, 4),
        "p3": (16, 8),
        "p4": (16, 16),
        "p5": (16, 32),
        "p6": (16, 64),
    }
    assert backbone.net.output_shape()["block2"].channels == 64
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints["size_divisibility"] == 32
    out = backbone(torch.randn(1, 3, 96, 160))
    for name, s in shapes.items():
        assert out[name].shape == (1, 16, -(-96 // s.stride), -(-160 // s.stride)), name


def test_patch8_pyramid_and_single_tap():
    cfg = _cfg(**{"MODEL.OVD.CLIP.MODEL_NAME": "ovdet-tiny-vit",
                  "MODEL.OVD.BACKBONE.VIT_OUT_INDICES": [],
                  "MODEL.OVD.BACKBONE.SFP_SCALE_FACTORS": [2.0, 1.0, 0.5]})  # fmt: skip
    backbone = build_backbone(cfg)
    assert backbone.net.out_indices == [3]
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {
        "p2": 4,
        "p3": 8,
        "p4": 16,
        "p5": 32,
    }
    assert backbone.size_divisibility == 16
    out = backbone(torch.randn(2, 3, 48, 80))
    assert out["p2"].shape == (2, 16, 12, 20) and out["p5"].shape == (2, 16, 2, 3)


def test_blocks_equal_open_clip_at_native_size(tiny_vit):
    visual = tiny_vit.visual
    backbone = CLIPViT(visual=copy.deepcopy(visual), out_indices=(1, 3))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = visual.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        ref_last = visual.transformer(visual._embeds(x))[:, 1:]
    out = backbone(x)
    torch.testing.assert_close(out["block1"], ref["image_intermediates"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["block3"], ref["image_intermediates"][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out["block3"].flatten(2).transpose(1, 2), ref_last, atol=1e-5, rtol=1e-5
    )


def test_value_only_last_block_option(tiny_vit):
    visual = tiny_vit.visual
    plain = CLIPViT(visual=copy.deepcopy(visual), out_indices=(2, 3))
    dense = CLIPViT(visual=copy.deepcopy(visual), out_indices=(2, 3), value_only_last_block=True)
    x = torch.randn(1, 3, 64, 64)
    a, b = plain(x), dense(x)
    torch.testing.assert_close(a["block2"], b["block2"], rtol=0, atol=0)
    assert (a["block3"] - b["block3"]).abs().max() > 1e-3
    with torch.no_grad():
        tokens = visual.transformer.resblocks[2](
            visual.transformer.resblocks[1](visual.transformer.resblocks[0](visual._embeds(x)))
        )
        expected = value_only_block_forward(visual.transformer.resblocks[3], tokens)[:, 1:]
    torch.testing.assert_close(
        b["block3"].flatten(2).transpose(1, 2), expected, atol=1e-5, rtol=1e-5
    )


def test_frozen_means_frozen_in_a_training_step():
    torch.manual_seed(0)
    model = build_model(_cfg())
    model.train()
    tower = model.backbone.net.tower
    assert not tower.training
    before = {k: v.detach().clone() for k, v in tower.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with EventStorage(0):
        losses = model(detection_batch())  # 75 x 101: not a multiple of the patch size -> padded
    sum(losses.values()).backward()
    opt.step()
    for name, p in tower.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for k, v in tower.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, msg=k)
    assert model.backbone.simfp_2[0].weight.grad is not None  # the pyramid trains


def test_full_detector_pads_odd_input_and_runs_backward():
    model = build_model(_cfg(**{"MODEL.OVD.BACKBONE.FREEZE": False}))
    model.train()
    batch = detection_batch(77, 103)
    images = model.preprocess_image(batch)
    assert images.tensor.shape[-2:] == (96, 128)  # padded to multiples of 32 (and of patch 16)
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    tower = model.backbone.net.tower.visual
    assert tower.transformer.resblocks[0].mlp.c_fc.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 77, 103) * 255}])
    assert out[0]["instances"].image_size == (77, 103)


def test_window_attention_and_feature_stride(tiny_vit):
    visual = tiny_vit.visual
    glob = CLIPViT(visual=copy.deepcopy(visual))
    win = CLIPViT(visual=copy.deepcopy(visual), window_size=3, window_block_indexes=(0, 1, 2))
    x = torch.randn(1, 3, 56, 88)  # grid 7 x 11: windows padded
    a, b = glob(x)["block3"], win(x)["block3"]
    assert a.shape == b.shape == (1, 128, 7, 11)
    assert (a - b).abs().max() > 1e-3
    # window size without windowed blocks is global attention (exact windowing: test_dense_features)
    none = CLIPViT(visual=copy.deepcopy(visual), window_size=3, window_block_indexes=())
    torch.testing.assert_close(none(x)["block3"], a, rtol=0, atol=0)
    resampled = CLIPViT(visual=copy.deepcopy(visual), feature_stride=16)
    assert resampled.size_divisibility == 16
    assert resampled(torch.randn(1, 3, 64, 96))["block3"].shape == (1, 128, 4, 6)


def test_lr_decay_rate():
    cfg = _cfg(**{"MODEL.OVD.BACKBONE.FREEZE": False})
    model = build_model(cfg)
    f = partial(get_vit_lr_decay_rate, lr_decay_rate=0.5, num_layers=3)
    prefix = "backbone.net.tower.visual."
    assert f(prefix + "transformer.resblocks.2.mlp.c_fc.weight") == 0.5
    assert f(prefix + "transformer.resblocks.0.attn.in_proj_weight") == 0.125
    assert f(prefix + "positional_embedding") == 0.0625
    assert f(prefix + "conv1.weight") == 0.0625
    assert f(prefix + "ln_post.weight") == 1.0
    assert f("backbone.simfp_2.0.weight") == 1.0
    assert f("roi_heads.box_predictor.cls_score.weight") == 1.0
    groups = get_default_optimizer_params(model, base_lr=1.0, lr_factor_func=f)
    lrs = {g["lr"] for g in groups}
    assert {0.0625, 0.125, 0.25, 0.5, 1.0} <= lrs


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="CLIP ViT backbone.*ModifiedResNet"):
        build_backbone(_cfg(**{"MODEL.OVD.CLIP.MODEL_NAME": "ovdet-tiny-rn"}))
    with pytest.raises(ValueError, match="one tap per level"):
        build_backbone(_cfg(**{"MODEL.OVD.BACKBONE.VIT_OUT_INDICES": [0, 1]}))
    with pytest.raises(ValueError, match="out of range"):
        build_backbone(_cfg(**{"MODEL.OVD.BACKBONE.VIT_OUT_INDICES": [0, 1, 2, 7]}))
    rn = build_clip_model("ovdet-tiny-rn")
    path = str(tmp_path / "rn.pt")
    torch.save(rn.state_dict(), path)
    with pytest.raises(RuntimeError, match=r"missing keys \(first: .*unexpected keys \(first:"):
        build_backbone(_cfg(**{"MODEL.OVD.CLIP.PRETRAINED": path}))
