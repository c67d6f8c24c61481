"""VLM region scorers: exactness against open_clip, the cheap attention pool, crop conventions,
one shared tower, frozen copies, build errors."""

import pytest
import torch
import torch.nn.functional as F
from conftest import load_test_config, randomize_bn
from detectron2.modeling import build_backbone
from detectron2.structures import Boxes
from torchvision.ops import roi_align

from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.clip.dense import tile_starts
from ovdet_plugin.modeling.vlm_scorers import (
    CLIP_TOWER_FEATURE,
    VLM_SCORER_REGISTRY,
    AttnPoolRegionScorer,
    AvgPoolRegionScorer,
    DenseRegionScorer,
    VLMRegionScorer,
    attention_pool_regions,
    build_vlm_scorer,
    roi_align_weights,
)


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
    assert {"attnpool", "dense", "avgpool", "vild_image"} <= {n for n, _ in VLM_SCORER_REGISTRY}
    with pytest.raises(ValueError, match="Unknown VLM scorer 'nope'.*known: \\['attnpool'"):
        build_vlm_scorer(
            load_test_config("tiny_clip_rn_fpn", **{"MODEL.OVD.VLM_SCORER.NAME": "nope"})
        )


def _random_attnpool(seed=0, grid=7, width=256, heads=8, out=128):
    from open_clip.modified_resnet import AttentionPool2d

    torch.manual_seed(seed)
    pool = AttentionPool2d(grid, width, heads, out).eval()
    with torch.no_grad():
        for p in pool.parameters():  # non-zero biases, so that bias placement is exercised
            p.add_(0.05 * torch.randn_like(p))
    return pool


def test_attention_pool_regions_equals_open_clip_per_region():
    pool = _random_attnpool()
    c5 = torch.randn(2, 256, 10, 13) * 2
    # boxes inside, partly outside and far outside the image (RoIAlign weights sum < 1 there)
    boxes = torch.tensor(
        [[0, 0.0, 0.0, 320.0, 416.0], [0, 40.0, 30.0, 200.0, 150.0], [1, -90.0, -50.0, 120.0, 90.0],
         [1, 300.0, 200.0, 700.0, 600.0], [1, 100.0, 100.0, 104.0, 102.0]]
    )  # fmt: skip
    for aligned, ratio in ((False, 1), (True, -1), (True, 2)):
        crops = roi_align(c5, boxes, 7, 1 / 32, ratio, aligned)
        with torch.no_grad():
            ref = pool(crops)  # open_clip, per region
            fast = attention_pool_regions(
                pool, c5, boxes, spatial_scale=1 / 32, sampling_ratio=ratio, aligned=aligned,
                chunk=2,  # chunking exercised
            )  # fmt: skip
        torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)
    empty = attention_pool_regions(
        pool, c5, boxes[:0], spatial_scale=1 / 32, sampling_ratio=1, aligned=False
    )
    assert empty.shape == (0, 128)


def test_roi_align_weights_reproduce_roi_align():
    fmap = torch.randn(1, 5, 6, 9)
    rois = torch.tensor([[0, -3.0, 2.0, 40.0, 30.0], [0, 10.0, 10.0, 11.0, 12.0]])
    for aligned, ratio in ((False, 1), (True, -1)):
        w = roi_align_weights(rois, (6, 9), 3, 1 / 4, ratio, aligned)  # (R, 9, 54)
        ref = roi_align(fmap, rois, 3, 1 / 4, ratio, aligned).flatten(2)  # (R, 5, 9)
        got = torch.einsum("rjp,cp->rcj", w, fmap[0].flatten(1))
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_attnpool_full_image_box_equals_encode_image(tiny_rn):
    # Detectron2's aligned crop reads each C5 cell exactly: the full box is CLIP's image embedding
    scorer = AttnPoolRegionScorer(tiny_rn.visual, aligned=True, sampling_ratio=-1)
    assert scorer.pooler_resolution == 4  # image 128 / 32
    x = torch.randn(2, 3, 128, 128)  # CLIP's native size
    full = torch.tensor([[0.0, 0.0, 128.0, 128.0]])
    emb = scorer(x, None, [full, Boxes(full)])
    with torch.no_grad():
        ref = F.normalize(tiny_rn.encode_image(x), dim=-1)
    assert emb.shape == (2, 64)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)
    # sub-boxes on a larger, non-square image: normalised, box order kept
    big = torch.randn(1, 3, 160, 224)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [30.0, 40.0, 200.0, 150.0]])
    both = scorer(big, None, boxes)
    torch.testing.assert_close(both.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(scorer(big, None, boxes[1:]), both[1:], atol=1e-5, rtol=1e-5)
    assert (both[0] - both[1]).abs().max() > 1e-3
    assert scorer(big, None, torch.zeros(0, 4)).shape == (0, 64)


def test_attnpool_official_crop_is_unaligned_one_sample_per_bin(tiny_rn):
    scorer = AttnPoolRegionScorer(tiny_rn.visual)  # the official (F-VLM) convention by default
    assert (scorer.aligned, scorer.sampling_ratio) == (False, 1)
    x = torch.randn(1, 3, 160, 224)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [30.0, 40.0, 200.0, 150.0]])
    with torch.no_grad():
        c5 = scorer.tower_map(x)
        crops = roi_align(c5, torch.cat([torch.zeros(2, 1), boxes], 1), 4, 1 / 32, 1, False)
        ref = F.normalize(tiny_rn.visual.attnpool(crops), dim=-1)
    torch.testing.assert_close(scorer(x, None, boxes), ref, atol=1e-5, rtol=1e-5)
    aligned = AttnPoolRegionScorer(tiny_rn.visual, aligned=True, sampling_ratio=-1)
    assert (aligned(x, None, boxes) - ref).abs().max() > 1e-4  # the conventions differ


def test_attnpool_resolution_must_match_grid(tiny_rn):
    with pytest.raises(ValueError, match="attention pool.*4x4"):
        AttnPoolRegionScorer(tiny_rn.visual, pooler_resolution=7)


def test_attnpool_res4_crop_runs_the_last_stage_on_each_c4_crop(tiny_rn):
    scorer = AttnPoolRegionScorer(
        tiny_rn.visual, aligned=True, sampling_ratio=-1, crop_stage="res4"
    )
    assert (scorer.pooler_resolution, scorer.tower_stride) == (8, 16)  # 2 x the 4x4 grid
    v = tiny_rn.visual
    x = torch.randn(2, 3, 128, 128)
    # the whole image: its C4 map through layer4 is its C5 map, so the embedding is CLIP's own
    full = torch.tensor([[0.0, 0.0, 128.0, 128.0]])
    with torch.no_grad():
        ref = F.normalize(tiny_rn.encode_image(x), dim=-1)
    torch.testing.assert_close(scorer(x, None, [full, full]), ref, atol=1e-5, rtol=1e-5)
    # sub-boxes: RoIAlign on C4, layer4, attention pool (RegionCLIP's region feature)
    big = torch.randn(1, 3, 160, 224)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0], [30.0, 40.0, 200.0, 150.0], [5, 6, 30, 20]])
    with torch.no_grad():
        c4 = v.layer3(v.layer2(v.layer1(v.stem(big))))
        crops = roi_align(c4, torch.cat([torch.zeros(3, 1), boxes], 1), 8, 1 / 16, -1, True)
        ref = F.normalize(v.attnpool(v.layer4(crops)), dim=-1)
    torch.testing.assert_close(scorer(big, None, boxes), ref, atol=1e-5, rtol=1e-5)
    c5_crop = AttnPoolRegionScorer(tiny_rn.visual, aligned=True, sampling_ratio=-1)
    assert (c5_crop(big, None, boxes) - ref).abs().max() > 1e-3  # the two stages differ
    assert scorer(big, None, torch.zeros(0, 4)).shape == (0, 64)
    with pytest.raises(ValueError, match="CROP_STAGE must be one of \\['res5', 'res4', 'image'\\]"):
        AttnPoolRegionScorer(tiny_rn.visual, crop_stage="res3")


def test_attnpool_res4_reads_the_frozen_backbones_c4_map():
    cfg = load_test_config("tiny_clip_rn_fpn", **{"MODEL.OVD.VLM_SCORER.CROP_STAGE": "res4"})
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    scorer = build_vlm_scorer(cfg, backbone=backbone)
    assert scorer.crop_stage == "res4" and scorer.shared and scorer.reads_backbone_map
    x = torch.randn(1, 3, 96, 128)
    features = backbone(x)
    assert features[CLIP_TOWER_FEATURE].shape[-2:] == (6, 8)  # C4: stride 16
    assert features["p2"].shape[-2:] == (24, 32)  # the FPN's own inputs are untouched
    boxes = torch.tensor([[10.0, 10.0, 90.0, 70.0], [-20.0, 5.0, 60.0, 120.0]])
    torch.testing.assert_close(
        scorer(x, features, boxes), scorer.pool(scorer.tower_map(x), boxes), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="stage must be 'res4' or 'res5', got 'res3'"):
        backbone.bottom_up.expose_tower_map("res3")
    # the key belongs to the ResNet scorer: a ViT scorer refuses it
    vit_cfg = load_test_config("tiny_clip_vit_sfp", **{"MODEL.OVD.VLM_SCORER.CROP_STAGE": "res4"})
    with pytest.raises(ValueError, match="CROP_STAGE 'res4' is not a stage the 'dense' scorer"):
        build_vlm_scorer(vit_cfg, backbone=build_backbone(vit_cfg))


def _crops(x, boxes, size, scale=1.0):
    """Reference image crops: each box enlarged about its centre, aligned RoIAlign, 2 samples."""
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * scale / 2
    rois = torch.cat([torch.zeros(len(boxes), 1), centre - half, centre + half], 1)
    return roi_align(x, rois, size, 1.0, 2, True)


def test_image_crop_stage_runs_the_tower_on_each_regions_pixels(tiny_rn):
    torch.manual_seed(0)
    vit = build_clip_model("ovdet-tiny-vit-avg")  # 64-px input, average pool
    x = torch.randn(1, 3, 96, 128)
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [-20.0, 5.0, 60.0, 90.0], [70, 8, 90, 30]])
    with torch.no_grad():
        # one scale: the tower's own image embedding of each crop (open_clip encode_image)
        avg = AvgPoolRegionScorer(vit.visual, crop_stage="image", image_crop_scales=[1.0])
        ref = F.normalize(vit.encode_image(_crops(x, boxes, 64)), dim=-1)
        torch.testing.assert_close(avg(x, None, boxes), ref, atol=1e-5, rtol=1e-5)
        rn = AttnPoolRegionScorer(tiny_rn.visual, crop_stage="image", image_crop_scales=[1.0])
        ref_rn = F.normalize(tiny_rn.encode_image(_crops(x, boxes, 128)), dim=-1)
        torch.testing.assert_close(rn(x, None, boxes), ref_rn, atol=1e-5, rtol=1e-5)
        # the dense scorer: the mean of CLIPSelf's dense map of each crop
        dense = DenseRegionScorer(vit.visual, crop_stage="image", image_crop_scales=[1.0])
        ref_dense = F.normalize(dense.dense(_crops(x, boxes, 64)).mean(dim=(2, 3)), dim=-1)
        torch.testing.assert_close(dense(x, None, boxes), ref_dense, atol=1e-5, rtol=1e-5)
        assert (ref_dense - ref).abs().max() > 1e-3  # value-only last block: another pooling
        # ViLD's ensemble: the normalised embeddings of the 1x and 1.5x crops, summed
        both = AvgPoolRegionScorer(vit.visual, crop_stage="image")
        assert both.image_crop_scales == (1.0, 1.5)
        wide = F.normalize(vit.encode_image(_crops(x, boxes, 64, 1.5)), dim=-1)
        torch.testing.assert_close(
            both(x, None, boxes), F.normalize(ref + wide, dim=-1), atol=1e-5, rtol=1e-5
        )
        assert both(x, None, torch.zeros(0, 4)).shape == (0, 64)
        # per image: the boxes of the second image are cut from the second image
        pair = torch.stack([x[0], torch.randn(3, 96, 128)])
        out = both(pair, None, [boxes[:1], boxes[1:]])
        torch.testing.assert_close(out[1:], both(pair[1:], None, boxes[1:]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="IMAGE_CROP_SCALES must list positive"):
        AvgPoolRegionScorer(vit.visual, crop_stage="image", image_crop_scales=[])


def test_image_crop_stage_from_the_config_runs_the_shared_tower_on_crops():
    cfg = load_test_config(
        "tiny_clip_vit_sfp",
        **{"MODEL.OVD.VLM_SCORER.CROP_STAGE": "image", "MODEL.OVD.VLM_SCORER.NAME": "avgpool"},
    )
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    scorer = build_vlm_scorer(cfg, backbone=backbone)
    assert scorer.crop_stage == "image" and scorer.image_crop_scales == (1.0, 1.5)
    assert scorer.shared and not scorer.reads_backbone_map  # one tower, run on the crops
    x = torch.randn(1, 3, 64, 96)
    features = backbone(x)
    assert CLIP_TOWER_FEATURE not in features  # the backbone exposes no map for it
    boxes = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    torch.testing.assert_close(
        scorer(x, features, boxes), scorer.pool_image_crops(x, boxes), atol=0, rtol=0
    )
    # the ResNet backbone exposes no stage either
    rn_cfg = load_test_config("tiny_clip_rn_fpn", **{"MODEL.OVD.VLM_SCORER.CROP_STAGE": "image"})
    rn_backbone = build_backbone(rn_cfg)
    rn_scorer = build_vlm_scorer(rn_cfg, backbone=rn_backbone)
    assert rn_scorer.crop_stage == "image" and not rn_scorer.reads_backbone_map
    assert rn_backbone.bottom_up.tower_map_stage is None
    windowed = cfg.clone()
    windowed.MODEL.OVD.VLM_SCORER.TOWER_WINDOW = 32
    with pytest.raises(ValueError, match="with CROP_STAGE 'image' it runs on each region's crop"):
        build_vlm_scorer(windowed, backbone=backbone)


def test_dense_scorer_is_1x1_roialign_on_dense_map(tiny_vit):
    scorer = DenseRegionScorer(tiny_vit.visual)
    assert scorer.pooler_resolution == 1 and (scorer.aligned, scorer.sampling_ratio) == (True, -1)
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        dmap = scorer.dense(x)  # CLIPSelf's dense map
    assert dmap.shape == (1, 64, 6, 10)
    # a box exactly on patch cell (row 2, col 3): the map's (normalised) vector there
    cell = torch.tensor([[24.0, 16.0, 32.0, 24.0]])
    torch.testing.assert_close(scorer(x, None, cell)[0], dmap[0, :, 2, 3], atol=1e-5, rtol=1e-5)
    # a 2x2-cell box: bilinear centre sample = mean of the four cells, renormalised
    box = torch.tensor([[8.0, 8.0, 24.0, 24.0]])
    expected = F.normalize(dmap[0, :, 1:3, 1:3].mean(dim=(1, 2)), dim=0)
    torch.testing.assert_close(scorer(x, None, box)[0], expected, atol=1e-5, rtol=1e-5)


def test_avgpool_full_image_box_equals_avg_pool_encode_image():
    torch.manual_seed(0)
    model = build_clip_model("ovdet-tiny-vit-avg")  # pool_type "avg": GAP image embedding
    scorer = AvgPoolRegionScorer(model.visual, pooler_resolution=8, aligned=True)  # 8x8 grid
    x = torch.randn(2, 3, 64, 64)
    full = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    emb = scorer(x, None, [full, full])
    with torch.no_grad():
        ref = F.normalize(model.encode_image(x), dim=-1)
    torch.testing.assert_close(emb, ref, atol=1e-5, rtol=1e-5)
    default = AvgPoolRegionScorer(model.visual)
    assert default.pooler_resolution == 14 and (default.aligned, default.sampling_ratio) == (
        False,
        1,
    )
    out = default(torch.randn(1, 3, 64, 96), None, torch.tensor([[3.0, 5.0, 50.0, 60.0]]))
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1))


def test_kind_mismatch_fails_at_build():
    cfg = load_test_config("tiny_clip_vit_sfp.yaml", **{"MODEL.OVD.VLM_SCORER.NAME": "attnpool"})
    with pytest.raises(ValueError, match="needs a CLIP resnet tower, got a vit tower"):
        build_vlm_scorer(cfg)
    for name in ("dense", "avgpool"):
        cfg = load_test_config("tiny_clip_rn_fpn.yaml", **{"MODEL.OVD.VLM_SCORER.NAME": name})
        with pytest.raises(ValueError, match="needs a CLIP vit tower, got a resnet tower"):
            build_vlm_scorer(cfg, backbone=build_backbone(cfg))
    cfg = load_test_config("tiny_clip_rn_fpn.yaml", **{"MODEL.OVD.VLM_SCORER.CROP_CONVENTION": "x"})
    with pytest.raises(ValueError, match="CROP_CONVENTION must be one of"):
        build_vlm_scorer(cfg)


def _state_keys(module):
    return set(module.state_dict())


@pytest.mark.parametrize("config", ["tiny_clip_rn_fpn", "tiny_clip_vit_sfp"])
def test_frozen_backbone_tower_is_shared_and_its_map_read(config):
    cfg = load_test_config(config)
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    scorer = build_vlm_scorer(cfg, backbone=backbone)
    trunk = backbone.bottom_up if config.endswith("fpn") else backbone.net
    assert scorer.visual is trunk.visual and scorer.shared and scorer.reads_backbone_map
    assert not _state_keys(scorer) and not list(scorer.parameters())  # nothing held twice
    x = torch.randn(1, 3, 96, 128)
    features = backbone(x)
    assert CLIP_TOWER_FEATURE in features
    boxes = torch.tensor([[10.0, 10.0, 90.0, 70.0], [-20.0, 5.0, 60.0, 120.0]])
    # reading the backbone's map = running the tower again
    torch.testing.assert_close(
        scorer(x, features, boxes), scorer.pool(scorer.tower_map(x), boxes), atol=1e-5, rtol=1e-5
    )
    with pytest.raises(RuntimeError, match="backbone's 'clip_tower' map"):
        scorer(x, {}, boxes)
    # FROZEN_COPY forces an owned copy, which gives the same scores
    cfg.merge_from_list(["MODEL.OVD.VLM_SCORER.FROZEN_COPY", True])
    copied = build_vlm_scorer(cfg, backbone=backbone)
    assert copied.visual is not trunk.visual and not copied.shared
    torch.testing.assert_close(copied(x, None, boxes), scorer(x, features, boxes))


def test_dense_scorer_on_attention_last_block_runs_the_shared_tower():
    cfg = load_test_config(
        "tiny_clip_vit_sfp", **{"MODEL.OVD.BACKBONE.VIT_VALUE_ONLY_LAST_BLOCK": False}
    )
    backbone = build_backbone(cfg)
    scorer = build_vlm_scorer(cfg, backbone=backbone)
    assert scorer.shared and not scorer.reads_backbone_map  # needs a value-only last block
    assert CLIP_TOWER_FEATURE not in backbone(torch.randn(1, 3, 64, 64))


def test_last_block_key_sets_the_scorers_map_and_map_sharing():
    """VLM_SCORER.LAST_BLOCK: "attention" makes the dense scorer read the map of a backbone whose
    last block keeps attention (one tower pass) and equals the tower run that way; "value_only"
    on that backbone runs the tower again; a ResNet scorer or an unknown value is refused."""
    cfg = load_test_config(
        "tiny_clip_vit_sfp",
        **{
            "MODEL.OVD.BACKBONE.VIT_VALUE_ONLY_LAST_BLOCK": False,
            "MODEL.OVD.VLM_SCORER.LAST_BLOCK": "attention",
        },
    )
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    scorer = build_vlm_scorer(cfg, backbone=backbone)
    assert not scorer.value_only_last and scorer.shared and scorer.reads_backbone_map
    x = torch.randn(1, 3, 64, 96)
    features = backbone(x)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 50.0], [20.0, 10.0, 90.0, 60.0]])
    fmap = scorer.dense.last_block_map(x, value_only_last=False)
    torch.testing.assert_close(scorer(x, features, boxes), scorer.pool(fmap, boxes))
    cfg.merge_from_list(["MODEL.OVD.VLM_SCORER.LAST_BLOCK", "value_only"])
    value_only = build_vlm_scorer(cfg, backbone=backbone)
    assert value_only.value_only_last and not value_only.reads_backbone_map
    assert not torch.allclose(value_only(x, features, boxes), scorer(x, features, boxes))
    cfg.merge_from_list(["MODEL.OVD.VLM_SCORER.LAST_BLOCK", "values"])
    with pytest.raises(ValueError, match="LAST_BLOCK must be one of"):
        build_vlm_scorer(cfg, backbone=backbone)
    cfg = load_test_config(
        "tiny_clip_rn_fpn.yaml", **{"MODEL.OVD.VLM_SCORER.LAST_BLOCK": "attention"}
    )
    with pytest.raises(ValueError, match="LAST_BLOCK 'attention' .* 'attnpool' scorer's tower"):
        build_vlm_scorer(cfg)


def test_frozen_copy_survives_backbone_fine_tuning():
    cfg = load_test_config("tiny_clip_vit_sfp.yaml", **{"MODEL.OVD.BACKBONE.FREEZE": False})
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    scorer = build_vlm_scorer(cfg, backbone=backbone)  # a copy by itself: the backbone trains
    assert scorer.visual is not backbone.net.tower.visual and not scorer.reads_backbone_map
    assert all(not p.requires_grad for p in scorer.parameters())
    scorer.train()
    assert not scorer.training and not scorer.visual.training
    x = torch.randn(1, 3, 64, 96)
    boxes = torch.tensor([[0.0, 0.0, 40.0, 50.0], [20.0, 10.0, 90.0, 60.0]])
    before = scorer(x, None, boxes)
    opt = torch.optim.SGD(backbone.parameters(), lr=1.0)
    backbone.train()
    sum(v.square().mean() for v in backbone(x).values()).backward()
    opt.step()
    tower = backbone.net.tower.visual
    assert not torch.equal(tower.transformer.resblocks[0].mlp.c_fc.weight,
                           scorer.visual.transformer.resblocks[0].mlp.c_fc.weight)  # fmt: skip
    torch.testing.assert_close(scorer(x, None, boxes), before, rtol=0, atol=0)


def test_scorer_outputs_are_not_differentiable_and_batch_order(tiny_vit):
    scorer = DenseRegionScorer(tiny_vit.visual)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    boxes = [torch.tensor([[0.0, 0.0, 32.0, 32.0]]), torch.tensor([[0.0, 0.0, 32.0, 32.0]])]
    out = scorer(x, None, boxes)
    assert not out.requires_grad
    torch.testing.assert_close(out[1], scorer(x[1:], None, boxes[1:])[0], atol=1e-5, rtol=1e-5)


def test_a_scorer_registered_outside_the_package_is_built_and_used():
    calls = []

    class ConstantScorer(VLMRegionScorer):
        embed_dim = 64

        def forward(self, images, features, boxes, box_features=None):
            calls.append(box_features.shape)
            n = sum(len(b) for b in boxes)
            return F.normalize(torch.ones(n, 64), dim=1)

    @VLM_SCORER_REGISTRY.register()
    def test_constant_scorer(cfg, **context):
        return ConstantScorer()

    try:
        from detectron2.modeling import build_model

        cfg = load_test_config("tiny_fvlm", **{"MODEL.OVD.VLM_SCORER.NAME": "test_constant_scorer"})
        model = build_model(cfg).eval()
        assert isinstance(model.roi_heads.vlm_scorer, ConstantScorer)
        with torch.no_grad():
            model([{"image": torch.randint(0, 255, (3, 64, 64)).float()}])
        assert calls and calls[0][0] > 0
    finally:
        VLM_SCORER_REGISTRY._obj_map.pop("test_constant_scorer")


def test_avgpool_tower_windows_average_the_window_maps():
    """TOWER_WINDOW: each cell of the map is the mean of the maps of the windows covering it; a
    window as large as the image is the whole-image map; a ResNet scorer or a window that is not
    a multiple of the patch is refused by name; a frozen backbone's map is not read."""
    torch.manual_seed(0)
    model = build_clip_model("ovdet-tiny-vit-avg")  # patch 8, 64-px input
    x = torch.randn(2, 3, 128, 96)
    whole = AvgPoolRegionScorer(model.visual)
    same = AvgPoolRegionScorer(model.visual, window=128)
    torch.testing.assert_close(same.tower_map(x), whole.tower_map(x))
    tiles = AvgPoolRegionScorer(model.visual, window=64, window_stride=64)  # last column flush
    assert tile_starts(128, 64, 64) == [0, 64] and tile_starts(96, 64, 64) == [0, 32]
    out = tiles.tower_map(x)
    assert out.shape == whole.tower_map(x).shape == (2, 64, 16, 12)
    top_left = whole.tower_map(x[:, :, :64, :64])
    torch.testing.assert_close(out[..., :8, :4], top_left[..., :, :4])  # one window only
    right = whole.tower_map(x[:, :, :64, 32:96])  # the flush window of the first row
    torch.testing.assert_close(out[..., :8, 4:8], (top_left[..., :, 4:] + right[..., :, :4]) / 2)
    halves = AvgPoolRegionScorer(model.visual, window=64)  # stride 32 by default
    assert halves.window_stride == 32 and not torch.allclose(halves.tower_map(x), out)
    for bad in ({"window": 60}, {"window": 64, "window_stride": -32}, {"window": -64}):
        with pytest.raises(ValueError, match="multiples of the tower's patch size"):
            AvgPoolRegionScorer(model.visual, **bad)
    cfg = load_test_config("tiny_clip_rn_fpn.yaml", **{"MODEL.OVD.VLM_SCORER.TOWER_WINDOW": 64})
    with pytest.raises(ValueError, match="TOWER_WINDOW .* the 'attnpool' scorer's tower is a CLIP"):
        build_vlm_scorer(cfg)
    cfg = load_test_config("tiny_clip_vit_sfp", **{"MODEL.OVD.VLM_SCORER.TOWER_WINDOW": 32})
    backbone = build_backbone(cfg)
    scorer = build_vlm_scorer(cfg, backbone=backbone)
    assert scorer.shared and not scorer.reads_backbone_map and scorer.window == 32
