"""The YAML configs' inheritance: every config with a CLIP backbone takes its backbone block
(backbone builder, feature names, CLIP normalisation, RGB input) from the matching
configs/Base-CLIP-*.yaml (or, for a listed family switch, restates its structure), so the
tiny test configs and the paper recipes share one base; CLIP's PIXEL_MEAN / PIXEL_STD are
written once per backbone family; and the per-backbone copies of the LVIS protocol (one
_BASE_ per YAML) agree with configs/lvis/Base-LVIS-OV.yaml."""

import glob
import os

import pytest
import yaml
from conftest import REPO_ROOT

from ovdet_plugin import get_ovdet_cfg
from ovdet_plugin.clip import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD

CONFIGS = os.path.join(REPO_ROOT, "configs")
BACKBONE_BASE = {
    "build_clip_resnet_fpn_backbone": "Base-CLIP-RN-FPN.yaml",
    "build_clip_vit_sfp_backbone": "Base-CLIP-ViT-SFP.yaml",
}
LVIS_PROTOCOL = os.path.join(CONFIGS, "lvis", "Base-LVIS-OV.yaml")
LVIS_CLIP_PROTOCOLS = ["Base-LVIS-OV-CLIP-RN.yaml", "Base-LVIS-OV-CLIP-ViT.yaml"]


def yaml_configs():
    """Every YAML config under configs/ (the Python LazyConfigs of configs/lazy aside)."""
    return sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yaml"), recursive=True))


def _load(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def base_chain(path):
    """The file and its _BASE_ ancestors, nearest first, as absolute paths."""
    chain = [os.path.abspath(path)]
    while "_BASE_" in _load(chain[-1]):
        chain.append(
            os.path.abspath(os.path.join(os.path.dirname(chain[-1]), _load(chain[-1])["_BASE_"]))
        )
    return chain


def written_keys(path):
    """{dotted key: value} that the file itself writes (not its bases)."""
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, prefix + k + ".")
            elif k != "_BASE_":
                out[prefix + k] = v

    walk(_load(path), "")
    return out


def _value(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def _rel(path):
    return os.path.relpath(path, REPO_ROOT)


CLIP_BACKBONE_CONFIGS = [
    p for p in yaml_configs() if get_ovdet_cfg(p).MODEL.BACKBONE.NAME in BACKBONE_BASE
]


def test_the_paper_configs_have_clip_backbones():
    names = {_rel(p) for p in CLIP_BACKBONE_CONFIGS}
    for paper in (
        "configs/lvis/fvlm_RN50_FPN.yaml",
        "configs/lvis/fvlm_RN50x64_FPN.yaml",
        "configs/lvis/fvit_B16_clipself.yaml",
        "configs/lvis/rovit_B16.yaml",
        "configs/coco/fvlm_RN50_FPN.yaml",
        "configs/coco/fvit_B16_clipself.yaml",
        "configs/synthetic/fvlm.yaml",
        "configs/test/tiny_fvlm.yaml",
        "configs/test/tiny_fvit.yaml",
    ):
        assert paper in names


# The backbone block's structure: the keys a config that switches backbone family must restate.
BACKBONE_STRUCTURE = (
    "MODEL.BACKBONE.NAME",
    "MODEL.FPN.IN_FEATURES",
    "MODEL.OVD.BACKBONE.OUT_FEATURES",
)
# Configs on another family's base (one _BASE_ per YAML): the generated-data benchmark's CLIP
# ResNet methods share its ViT base's data, solver and heads.
FAMILY_SWITCHES = {"configs/synthetic/Base-Synthetic-RN.yaml"}


@pytest.mark.parametrize("path", CLIP_BACKBONE_CONFIGS, ids=_rel)
def test_a_clip_backbone_config_inherits_the_matching_base(path):
    cfg = get_ovdet_cfg(path)
    base = os.path.join(CONFIGS, BACKBONE_BASE[cfg.MODEL.BACKBONE.NAME])
    chain = base_chain(path)
    switch = [p for p in chain if _rel(p) in FAMILY_SWITCHES]
    if switch:  # it restates the family's backbone block itself, as the base writes it
        base_keys, own = written_keys(base), written_keys(switch[0])
        for key in BACKBONE_STRUCTURE:
            value = _value(cfg, key)
            assert own[key] == base_keys[key], f"{_rel(switch[0])}: {key}"
            assert (list(value) if isinstance(value, (list, tuple)) else value) == base_keys[key]
    else:
        assert base in chain, f"{_rel(path)} does not inherit {_rel(base)}"
    assert list(cfg.MODEL.PIXEL_MEAN) == pytest.approx(CLIP_PIXEL_MEAN)
    assert list(cfg.MODEL.PIXEL_STD) == pytest.approx(CLIP_PIXEL_STD)
    assert cfg.INPUT.FORMAT == "RGB"


def test_pixel_mean_and_std_are_written_once_per_backbone_family():
    writers = {
        _rel(p)
        for p in yaml_configs()
        if {"MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"} & set(written_keys(p))
    }
    clip_bases = {f"configs/{name}" for name in BACKBONE_BASE.values()}
    # besides the CLIP bases, only a tiny test config (a random ResNet, ImageNet statistics)
    assert writers - clip_bases == {"configs/test/tiny_centerness_rpn.yaml"}
    assert clip_bases <= writers
    for base in clip_bases:
        keys = written_keys(os.path.join(REPO_ROOT, base))
        assert keys["MODEL.PIXEL_MEAN"] == pytest.approx(CLIP_PIXEL_MEAN)
        assert keys["MODEL.PIXEL_STD"] == pytest.approx(CLIP_PIXEL_STD)


@pytest.mark.parametrize("name", LVIS_CLIP_PROTOCOLS)
def test_the_per_backbone_lvis_protocols_agree_with_base_lvis_ov(name):
    path = os.path.join(CONFIGS, "lvis", name)
    protocol, copy = written_keys(LVIS_PROTOCOL), written_keys(path)
    # the copy writes nothing the protocol does not (its backbone comes from its _BASE_) ...
    assert set(copy) <= set(protocol), set(copy) - set(protocol)
    # ... and loads with the protocol's every value
    cfg, reference = get_ovdet_cfg(path), get_ovdet_cfg(LVIS_PROTOCOL)
    for key in protocol:
        assert _value(cfg, key) == _value(reference, key), f"{name}: {key}"
