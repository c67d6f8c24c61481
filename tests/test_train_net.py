"""tools/train_net.py end to end on a small generated dataset: stock DefaultTrainer (OVDTrainer),
stock LVISEvaluator, checkpoint, --eval-only, and a swapped test vocabulary."""

import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from ovdet_plugin.data.synthetic.generator import generate_synthetic_dataset


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("d2data")
    generate_synthetic_dataset(
        root / "ovdet_synthetic", num_train=12, num_val=4, num_pretrain=0, image_size=96,
        progress=False,
    )  # fmt: skip
    return str(root)


def run_train_net(root, out, *opts):
    env = dict(os.environ, DETECTRON2_DATASETS=root, PYTHONPATH=REPO_ROOT)
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "tools", "train_net.py"),
        "--config-file", os.path.join(REPO_ROOT, "configs", "test", "tiny_fvlm.yaml"),
        *opts,
        "MODEL.META_ARCHITECTURE", "OVRCNN",
        "DATASETS.TRAIN", '("ovdet_synthetic_train",)',
        "DATASETS.TEST", '("ovdet_synthetic_val",)',
        "MODEL.OVD.TRAIN_VOCABULARY", "dataset:ovdet_synthetic_train",
        "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001",
        "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96",
        "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_train_then_evaluate_with_stock_lvis_evaluator(synthetic_root, tmp_path):
    result = run_train_net(synthetic_root, tmp_path)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    assert os.path.isfile(tmp_path / "model_final.pth")
    assert "copypaste: AP,AP50,AP75,APs,APm,APl,APr,APc,APf" in log  # LVISEvaluator ran

    evaluated = run_train_net(
        synthetic_root, tmp_path / "eval", "--eval-only",
        "MODEL.WEIGHTS", str(tmp_path / "model_final.pth"),
    )  # fmt: skip
    log = evaluated.stdout + evaluated.stderr
    assert evaluated.returncode == 0, log[-4000:]
    assert "APr" in log and "Evaluation results for bbox" in log


def test_unknown_config_key_fails_cleanly(synthetic_root, tmp_path):
    result = run_train_net(synthetic_root, tmp_path, "MODEL.OVD.NOT_A_KEY", "1")
    assert result.returncode != 0
    assert "Non-existent key: MODEL.OVD.NOT_A_KEY" in result.stderr  # Detectron2's message
