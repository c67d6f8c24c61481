"""Every shipped config merges into get_cfg() + add_ovdet_config(); the paper-scale configs
build a model (random weights, a 2-class vocabulary, no download) with the right parts."""

import glob
import os

import pytest
import torch
from conftest import REPO_ROOT
from detectron2.config import get_cfg
from detectron2.modeling import build_model

import ovdet_plugin

ALL_CONFIGS = sorted(
    os.path.relpath(p, REPO_ROOT)
    for p in glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True)
)
PAPER_CONFIGS = [c for c in ALL_CONFIGS if c.startswith(("configs/lvis/", "configs/coco/"))]


def load(path, *opts):
    cfg = ovdet_plugin.add_ovdet_config(get_cfg())
    cfg.merge_from_file(os.path.join(REPO_ROOT, path))
    cfg.merge_from_list(list(opts))
    return cfg


@pytest.mark.parametrize("path", ALL_CONFIGS)
def test_config_merges(path):
    load(path)


def test_paper_configs_are_all_there():
    names = {os.path.splitext(os.path.basename(p))[0] for p in PAPER_CONFIGS}
    for name in ("vild_R50_FPN", "vild_ensemble_R50_FPN", "fvlm_RN50_FPN", "fvlm_RN50x64_FPN",
                 "fvit_B16_clipself", "rovit_B16"):  # fmt: skip
        assert f"configs/lvis/{name}.yaml" in PAPER_CONFIGS
    assert {"fvlm_RN50_FPN", "fvit_B16_clipself"} <= names
    assert "configs/coco/fvlm_RN50_FPN.yaml" in PAPER_CONFIGS


@pytest.mark.parametrize(
    "path,head,scorer",
    [
        ("configs/lvis/vild_R50_FPN.yaml", "ViLDROIHeads", None),
        ("configs/lvis/vild_ensemble_R50_FPN.yaml", "ViLDROIHeads", "ViLDImageBranchScorer"),
        ("configs/lvis/fvlm_RN50_FPN.yaml", "OVROIHeads", "AttnPoolRegionScorer"),
        ("configs/lvis/fvit_B16_clipself.yaml", "OVROIHeads", "DenseRegionScorer"),
        ("configs/lvis/rovit_B16.yaml", "OVROIHeads", "AvgPoolRegionScorer"),
    ],
)
def test_paper_config_builds(path, head, scorer):
    cfg = load(
        path,
        "MODEL.DEVICE", "cpu",
        "MODEL.OVD.CLIP.PRETRAINED", "",
        "MODEL.OVD.TRAIN_VOCABULARY", "cat, dog",
        "MODEL.OVD.TEXT.PROMPTS", "single",
        "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FPN.NORM", "",
        "MODEL.ROI_BOX_HEAD.NORM", "", "MODEL.ROI_MASK_HEAD.NORM", "",  # no SyncBN without DDP
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg)
    assert type(model.roi_heads).__name__ == head
    assert model.roi_heads.num_classes == 2  # NUM_CLASSES 1203 in the YAML follows the vocabulary
    got = type(model.roi_heads.vlm_scorer).__name__ if model.roi_heads.vlm_scorer else None
    assert got == scorer
