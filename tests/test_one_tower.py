"""One frozen CLIP trunk per detector (F-VLM's central idea): every paper config whose backbone is
the frozen CLIP tower builds exactly one trunk, its VLM scorer reads the backbone's own map, and
the fused scores equal those of a detector whose scorer holds its own frozen copy."""

import pytest
import torch
from conftest import REPO_ROOT
from detectron2.modeling import build_model

from ovdet_plugin import get_ovdet_cfg
from ovdet_plugin.clip.dense import is_open_clip_vit
from ovdet_plugin.modeling.backbone.clip_resnet import is_open_clip_resnet

SMALL = [
    "MODEL.DEVICE", "cpu", "MODEL.OVD.CLIP.PRETRAINED", "", "MODEL.OVD.TEXT.PROMPTS", "single",
    "MODEL.OVD.TRAIN_VOCABULARY", "cat, dog, remote control", "MODEL.MASK_ON", "False",
    "INPUT.MIN_SIZE_TEST", "160", "INPUT.MAX_SIZE_TEST", "224",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
]  # fmt: skip


def _build(path, tmp_path, *opts):
    cfg = get_ovdet_cfg(f"{REPO_ROOT}/{path}", SMALL + ["MODEL.OVD.TEXT.CACHE_DIR", str(tmp_path)])
    cfg.merge_from_list(list(opts))
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _towers(model):
    return [m for m in model.modules() if is_open_clip_resnet(m) or is_open_clip_vit(m)]


def _numel(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "path",
    [
        "configs/lvis/fvlm_RN50_FPN.yaml",
        "configs/coco/fvlm_RN50_FPN.yaml",
        "configs/lvis/fvit_B16_clipself.yaml",
        "configs/coco/fvit_B16_clipself.yaml",
    ],
)
def test_frozen_clip_backbone_is_the_only_trunk(path, tmp_path):
    shared = _build(path, tmp_path)
    towers = _towers(shared)
    assert len(towers) == 1  # module identity: the scorer's tower IS the backbone's
    scorer = shared.roi_heads.vlm_scorer
    assert scorer.visual is towers[0] and scorer.reads_backbone_map
    assert not any(k.startswith("roi_heads.vlm_scorer.") for k in shared.state_dict())
    # the same detector with a frozen copy: exactly one tower more, and the same fused scores
    copied = _build(path, tmp_path, "MODEL.OVD.VLM_SCORER.FROZEN_COPY", "True")
    assert len(_towers(copied)) == 2
    assert _numel(copied) - _numel(shared) == _numel(towers[0])
    torch.manual_seed(1)
    image = {"image": torch.randint(0, 256, (3, 160, 224)).float(), "height": 160, "width": 224}
    with torch.no_grad():
        a = shared([image])[0]["instances"]
        b = copied([image])[0]["instances"]
    assert len(a) > 0
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.pred_boxes.tensor, b.pred_boxes.tensor)


def test_fine_tuned_backbone_scores_with_one_frozen_copy(tmp_path):
    model = _build("configs/lvis/rovit_B16.yaml", tmp_path)
    backbone_tower, scorer_tower = _towers(model)
    assert model.roi_heads.vlm_scorer.visual is scorer_tower
    assert any(p.requires_grad for p in backbone_tower.parameters())
    assert not any(p.requires_grad for p in scorer_tower.parameters())


def test_fvlm_rn50_has_a_7x7_box_head(tmp_path):
    model = _build("configs/lvis/fvlm_RN50_FPN.yaml", tmp_path)
    fc1 = model.roi_heads.box_head.fc1
    assert fc1.in_features == 256 * 7 * 7 and fc1.out_features == 1024  # 12.8 M, not 51.4 M
