"""The README walkthrough "Train on your own data" run as written, at tiny size: its bash block is
read from README.md and each command runs with three substitutions only: the tiny test config
(configs/test/tiny_own_data_fvlm.yaml, whose _BASE_ is the template) for the template, output/
under a temporary folder, and a small generated dataset. Register (the template's COCO-format
specs), pretrain nothing, train 2 iterations, evaluate (OV-COCO AP50 novel/base/all), demo."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

TEMPLATE = "configs/custom/fvlm_RN50_FPN_own_data.yaml"
TINY = "configs/test/tiny_own_data_fvlm.yaml"
MARKER = "<!-- tests/test_own_data_walkthrough.py runs this block"


def walkthrough_commands():
    """The commands of the README's walkthrough block (comments dropped)."""
    readme = open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()
    start = readme.index(MARKER)
    block = re.search(r"```bash\n(.*?)```", readme[start:], re.S).group(1)
    lines = [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return [line for line in lines if not line.lstrip().startswith("#")]


def _adapt(argv, tmp_path):
    """The three substitutions of the module docstring."""
    out = []
    for token in argv:
        if token == TEMPLATE:
            token = TINY
        elif token.startswith("output/"):
            token = str(tmp_path / token)
        out.append(token)
    tool = os.path.basename(argv[1])
    if tool == "generate_synthetic_data.py":
        out += ["--num-train", "8", "--num-val", "3", "--num-pretrain", "0"]
        out += ["--image-size", "64", "--no-progress"]
    elif tool == "train_net.py":
        out += ["OUTPUT_DIR", str(tmp_path / "output" / "my_data_fvlm")]
    elif tool == "demo.py":
        out.insert(2, "--confidence-threshold=1.01")  # scores are <= 1: nothing drawn
    return [sys.executable] + out[1:]


def test_readme_walkthrough_runs_end_to_end(tmp_path):
    commands = walkthrough_commands()
    assert commands[0] == "export DETECTRON2_DATASETS=$PWD/datasets"
    assert [shlex.split(c)[1] for c in commands[1:]] == [
        "tools/generate_synthetic_data.py",
        "tools/train_net.py",
        "tools/train_net.py",
        "tools/demo.py",
    ]
    data = tmp_path / "datasets"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, DETECTRON2_DATASETS=str(data), OMP_NUM_THREADS="1")
    logs = []
    for command in commands[1:]:
        argv = _adapt(
            shlex.split(os.path.expandvars(command.replace("$DETECTRON2_DATASETS", str(data)))),
            tmp_path,
        )
        result = subprocess.run(
            argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        log = result.stdout + result.stderr
        assert result.returncode == 0, f"{argv}\n{log[-4000:]}"
        logs.append(log)
    gen, train, evaluate, demo = logs
    assert os.path.isfile(data / "my_data" / "annotations" / "novel.txt")
    # the template's specs were registered (in the launch worker) and trained on
    assert "Registered dataset 'my_train' (coco format" in train
    assert "removed" in train and "of non-base classes" in train
    out = tmp_path / "output" / "my_data_fvlm"
    assert os.path.isfile(out / "model_final.pth")
    results = json.load(open(out / "eval_results.json"))["bbox"]
    for key in ("AP50_novel", "AP50_base", "AP50_all", "AP"):
        assert key in results
    assert "Open-vocabulary bbox results (8 novel, 24 base classes)" in evaluate
    pictures = os.listdir(tmp_path / "output" / "my_data_demo")
    assert len(pictures) == 3 and all(p.endswith(".png") for p in pictures)
    assert "no detection scored >= --confidence-threshold 1.01" in demo
    assert re.search(r"; \d+ fell below it \(highest score 0\.\d+\)", demo)


@pytest.mark.parametrize("path", [TEMPLATE, "configs/custom/vild_R50_FPN_own_data.yaml"])
def test_templates_name_the_keys_to_change(path):
    text = open(os.path.join(REPO_ROOT, path), encoding="utf-8").read()
    for key in ("CUSTOM_DATASETS", "TRAIN_VOCABULARY", "DATASETS", "SOLVER", "PRETRAINED"):
        assert re.search(rf"{key}.*# CHANGE|# CHANGE.*\n.*{key}", text), key
