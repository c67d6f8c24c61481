"""VLM region scorers (METHODS.md 2.3, 3.2, 4.3): exactness against open_clip, build errors,
frozen copies."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import load_test_config, randomize_bn
from detectron2.modeling import build_backbone
from detectron2.structures import Boxes

from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.modeling.vlm_scorers import (
    VLM_SCORERS,
    AttnPoolRegionScorer,
    AvgPoolRegionScorer,
    DenseRegionScorer,
    build_vlm_scorer,
)


def _cfg(name, **overrides):
    return load_test_config(name, **overrides)


@pytest.fixture(scope="module")
def tiny_rn():
    torch.manual_seed(0)
    model = build_clip_model("ovdet-tiny-rn")
    randomize_bn(model.visual)
    return model


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return build_clip_model("ovdet-tiny-vit")


def test_registry():
    assert set(VLM_SCORERS) >= {"attnpool", "dense", "avgpool"}


def test_attnpool_full_image_box_equals_encode_image(tiny_rn):
    scorer = build_vlm_scorer("attnpool", tiny_rn.visual)
    assert isinstance(scorer, AttnPoolRegionScorer)
    assert scorer.pooler_resolution == 4  # image 128 / 32
    x = torch.randn(2, 3, 128, 128)  # CLIP's native size
    full = torch.tensor([[0.0, 0.0, 128.0, 128.0]])
    emb = scorer(x, [full, Boxes(full)])
    with torch.no_grad():
        ref = F.normalize(tiny_rn.encode_image(x), dim=-1)
    assert emb.shape == (2, 64)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)
    # sub-boxes on a larger, non-square image: normalised, box order kept
    big = torch.randn(1, 3, 160, 224)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [30.0, 40.0, 200.0, 150.0]])
    both = scorer(big, boxes)
    torch.testing.assert_close(both.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(scorer(big, boxes[1:]), both[1:], atol=1e-6, rtol=1e-6)
    assert (both[0] - both[1]).abs().max() > 1e-3
    assert scorer(big, torch.zeros(0, 4)).shape == (0, 64)


def test_attnpool_resolution_must_match_grid(tiny_rn):
    with pytest.raises(ValueError, match="attention pool.*4x4"):
        build_vlm_scorer("attnpool", tiny_rn.visual, pooler_resolution=7)


def test_dense_scorer_is_1x1_roialign_on_dense_map(tiny_vit):
    scorer = build_vlm_scorer("dense", tiny_vit.visual)
    assert isinstance(scorer, DenseRegionScorer) and scorer.pooler_resolution == 1
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        dmap = scorer.extract(x)
    assert dmap.shape == (1, 64, 6, 10)
    # a box exactly on patch cell (row 2, col 3): the map's (normalised) vector there
    cell = torch.tensor([[24.0, 16.0, 32.0, 24.0]])
    torch.testing.assert_close(scorer(x, cell)[0], dmap[0, :, 2, 3], atol=1e-5, rtol=1e-5)
    # a 2x2-cell box: bilinear centre sample = mean of the four cells, renormalised
    box = torch.tensor([[8.0, 8.0, 24.0, 24.0]])
    expected = F.normalize(dmap[0, :, 1:3, 1:3].mean(dim=(1, 2)), dim=0)
    torch.testing.assert_close(scorer(x, box)[0], expected, atol=1e-5, rtol=1e-5)


def test_avgpool_full_image_box_equals_avg_pool_encode_image():
    torch.manual_seed(0)
    model = build_clip_model("ovdet-tiny-vit-avg")  # pool_type "avg": GAP image embedding
    scorer = build_vlm_scorer("avgpool", model.visual, pooler_resolution=8)  # the 8x8 grid
    assert isinstance(scorer, AvgPoolRegionScorer)
    x = torch.randn(2, 3, 64, 64)
    full = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    emb = scorer(x, [full, full])
    with torch.no_grad():
        ref = F.normalize(model.encode_image(x), dim=-1)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)
    default = build_vlm_scorer("avgpool", model.visual)
    assert default.pooler_resolution == 14
    out = default(torch.randn(1, 3, 64, 96), torch.tensor([[3.0, 5.0, 50.0, 60.0]]))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1))


def test_kind_mismatch_fails_at_build(tiny_rn, tiny_vit):
    with pytest.raises(ValueError, match="needs a CLIP resnet tower, got a vit tower"):
        build_vlm_scorer("attnpool", tiny_vit.visual)
    for name in ("dense", "avgpool"):
        with pytest.raises(ValueError, match="needs a CLIP vit tower, got a resnet tower"):
            build_vlm_scorer(name, tiny_rn.visual)
    with pytest.raises(KeyError, match="Unknown VLM scorer"):
        build_vlm_scorer("nope", tiny_vit.visual)
    cfg = _cfg("tiny_clip_vit_sfp.yaml", **{"MODEL.OVD.VLM_SCORER.NAME": "attnpool"})
    with pytest.raises(ValueError, match="needs a CLIP resnet tower"):
        build_vlm_scorer(cfg)


def test_build_from_config_and_backbone():
    cfg = _cfg("tiny_clip_rn_fpn.yaml")
    assert isinstance(build_vlm_scorer(cfg), AttnPoolRegionScorer)
    assert (
        build_vlm_scorer(_cfg("tiny_clip_rn_fpn.yaml", **{"MODEL.OVD.VLM_SCORER.NAME": ""})) is None
    )
    backbone = build_backbone(cfg)
    shared = build_vlm_scorer(cfg, backbone=backbone)
    assert shared.visual is backbone.bottom_up.visual  # FROZEN_COPY False in the base config
    x = torch.randn(1, 3, 96, 128)
    c5 = backbone.bottom_up(x)["res5"]
    boxes = torch.tensor([[10.0, 10.0, 90.0, 70.0]])
    torch.testing.assert_close(shared.pool(c5, boxes), shared(x, boxes))


def test_frozen_copy_survives_backbone_fine_tuning():
    cfg = _cfg("tiny_clip_vit_sfp.yaml", **{"MODEL.OVD.BACKBONE.FREEZE": False,
                                            "MODEL.OVD.VLM_SCORER.FROZEN_COPY": True})  # fmt: skip
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    scorer = build_vlm_scorer(cfg, backbone=backbone)
    assert scorer.visual is not backbone.net.tower.visual
    assert all(not p.requires_grad for p in scorer.parameters())
    scorer.train()
    assert not scorer.training and not scorer.visual.training
    x = torch.randn(1, 3, 64, 96)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 50.0], [20.0, 10.0, 90.0, 60.0]])
    before = scorer(x, boxes)
    opt = torch.optim.SGD(backbone.parameters(), lr=1.0)
    backbone.train()
    sum(v.square().mean() for v in backbone(x).values()).backward()
    opt.step()
    tower = backbone.net.tower.visual
    assert not torch.equal(tower.transformer.resblocks[0].mlp.c_fc.weight,
                           scorer.visual.transformer.resblocks[0].mlp.c_fc.weight)  # fmt: skip
    torch.testing.assert_close(scorer(x, boxes), before, rtol=0, atol=0)
    # sharing a trainable tower is refused
    cfg.merge_from_list(["MODEL.OVD.VLM_SCORER.FROZEN_COPY", False])
    with pytest.raises(ValueError, match="FROZEN_COPY"):
        build_vlm_scorer(cfg, backbone=backbone)


def test_scorer_outputs_are_not_differentiable_and_batch_order(tiny_vit):
    scorer = build_vlm_scorer("dense", copy.deepcopy(tiny_vit.visual), frozen_copy=False)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]])]
    out = scorer(x, boxes)
    assert not out.requires_grad
    torch.testing.assert_close(out[1], scorer(x[1:], boxes[1:])[0], atol=1e-5, rtol=1e-5)
