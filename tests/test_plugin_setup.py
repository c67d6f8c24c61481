"""Item 3 of the foundation issue: import/registration, add_ovdet_config, a plain Detectron2
script with only the two plugin lines, and Detectron2's usual error on unknown keys."""

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO_ROOT
from detectron2.config import get_cfg

import ovdet_plugin

TINY_CONFIG = os.path.join(REPO_ROOT, "configs", "test", "tiny_rcnn.yaml")


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )


def test_import_without_detectron2_says_how_to_install():
    result = _run_python("""
        import sys
        sys.modules["detectron2"] = None  # simulate a machine without detectron2
        import ovdet_plugin
        """)
    assert result.returncode != 0
    assert "ImportError: ovdet_plugin needs detectron2" in result.stderr
    assert "make install" in result.stderr and "facebookresearch/detectron2" in result.stderr


def test_plain_detectron2_script_needs_two_lines():
    result = _run_python(f"""
        import ovdet_plugin
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model
        cfg = get_cfg()
        ovdet_plugin.add_ovdet_config(cfg)
        cfg.merge_from_file({TINY_CONFIG!r})
        model = build_model(cfg)
        print("built", type(model).__name__, cfg.MODEL.OVD.CLIP.MODEL_NAME)
        """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built GeneralizedRCNN ovdet-tiny-vit" in result.stdout


def test_add_ovdet_config_defaults_and_idempotence():
    cfg = get_cfg()
    ovdet_plugin.add_ovdet_config(cfg)
    assert cfg.MODEL.OVD.TRAIN_VOCABULARY == "lvis"
    assert cfg.MODEL.OVD.TEXT.PROMPTS == "vild"
    once = cfg.dump()
    ovdet_plugin.add_ovdet_config(cfg)  # calling twice is harmless
    assert cfg.dump() == once


def test_unknown_key_fails_with_detectron2_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{TINY_CONFIG}"\nMODEL:\n  OVD:\n    NOT_A_KEY: 1\n')
    cfg = get_cfg()
    ovdet_plugin.add_ovdet_config(cfg)
    with pytest.raises(KeyError, match="Non-existent config key: MODEL.OVD.NOT_A_KEY"):
        cfg.merge_from_file(str(bad))


def test_ovdet_config_without_add_ovdet_config_fails():
    cfg = get_cfg()
    with pytest.raises(KeyError, match="Non-existent config key: MODEL.OVD"):
        cfg.merge_from_file(TINY_CONFIG)


def test_every_config_key_has_a_comment():
    """add_ovdet_config's style rule: a comment line right above every assignment."""
    import inspect

    from ovdet_plugin import config as config_module

    lines = inspect.getsource(config_module).splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("_C.MODEL.OVD.") and "= CN()" not in stripped:
            assert lines[i - 1].strip().startswith("#"), f"no comment above: {stripped}"


def test_tiny_clip_configs_are_registered_with_open_clip():
    import open_clip

    for name in ovdet_plugin.clip.TINY_MODEL_NAMES:
        assert name in open_clip.list_models()


def test_old_meta_architecture_name_still_loads_with_a_warning(caplog):
    """OVRCNN (read as the unrelated OVR-CNN paper) is a deprecated alias of
    OVDetGeneralizedRCNN: existing configs still build the same model."""
    import logging

    from conftest import load_test_config
    from detectron2.modeling import build_model

    from ovdet_plugin.modeling.meta_arch import OVDetGeneralizedRCNN

    cfg = load_test_config("tiny_vild", "MODEL.META_ARCHITECTURE", "OVRCNN")
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg)
    assert isinstance(model, OVDetGeneralizedRCNN)
    assert "deprecated" in caplog.text and "OVDetGeneralizedRCNN" in caplog.text
