"""tools/train_net.py end to end on a small generated dataset: stock DefaultTrainer (OVDTrainer),
stock LVISEvaluator, checkpoint, --eval-only, and a swapped test vocabulary."""

import json
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


TINY_FVLM_CONFIG = os.path.join(REPO_ROOT, "configs", "test", "tiny_fvlm.yaml")
# tiny_fvlm.yaml on the small generated dataset, 4 iterations
TINY_FVLM_OPTS = (
    "MODEL.META_ARCHITECTURE", "OVDetGeneralizedRCNN",
    "DATASETS.TRAIN", '("ovdet_synthetic_train",)',
    "DATASETS.TEST", '("ovdet_synthetic_val",)',
    "MODEL.OVD.TRAIN_VOCABULARY", "dataset:ovdet_synthetic_train",
    "SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001",
    "DATALOADER.NUM_WORKERS", "0", "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96",
)  # fmt: skip


def run_train_net(root, out, *opts, wrapper=None, env=None):
    """Run tools/train_net.py on the small generated dataset (``wrapper``: Python code run instead,
    given the script path and its arguments)."""
    env = dict(os.environ, DETECTRON2_DATASETS=root, PYTHONPATH=REPO_ROOT, **(env or {}))
    cmd = [
        sys.executable, *(["-c", wrapper] if wrapper else []),
        os.path.join(REPO_ROOT, "tools", "train_net.py"),
        "--config-file", TINY_FVLM_CONFIG, *opts, *TINY_FVLM_OPTS, "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_profile_train_step_prints_the_ops_of_trainer_iterations(synthetic_root, tmp_path):
    """benchmarks/profile_train_step.py profiles train_net.py's trainer on the same config."""
    env = dict(os.environ, DETECTRON2_DATASETS=synthetic_root, PYTHONPATH=REPO_ROOT)
    cmd = [
        sys.executable, os.path.join(REPO_ROOT, "benchmarks", "profile_train_step.py"),
        "--config-file", TINY_FVLM_CONFIG, "--warmup", "1", "--iters", "2", "--rows", "5",
        *TINY_FVLM_OPTS, "OUTPUT_DIR", str(tmp_path / "profile"),
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert "Self CPU" in result.stdout and "aten::" in result.stdout
    assert "ms of self CPU time per iteration over 2" in result.stdout
    assert os.path.isfile(tmp_path / "profile" / "config.yaml")  # train_net.py's own setup


# 6 iterations, a checkpoint every 2, fixed seed: the run the fault test compares with.
FAULT_OPTS = ("SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "SEED", "3")


@pytest.fixture(scope="module")
def trained_run(synthetic_root, tmp_path_factory):
    """An uninterrupted training run (then its evaluation): (output folder, its log)."""
    out = tmp_path_factory.mktemp("trained")
    result = run_train_net(synthetic_root, out, *FAULT_OPTS)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return out, log


def test_train_then_evaluate_with_stock_lvis_evaluator(synthetic_root, trained_run, tmp_path):
    out, log = trained_run
    assert os.path.isfile(out / "model_final.pth")
    assert "copypaste: AP,AP50,AP75,APs,APm,APl,APr,APc,APf" in log  # LVISEvaluator ran

    evaluated = run_train_net(
        synthetic_root, tmp_path / "eval", "--eval-only",
        "MODEL.WEIGHTS", str(out / "model_final.pth"),
    )  # fmt: skip
    log = evaluated.stdout + evaluated.stderr
    assert evaluated.returncode == 0, log[-4000:]
    assert "APr" in log and "Evaluation results for bbox" in log


def _eval_file(folder, *parts):
    with open(os.path.join(folder, *parts), encoding="utf-8") as f:
        return json.load(f)


def test_detector_only_evaluation_after_training_equals_a_separate_eval_without_fusion(
    synthetic_root, tmp_path
):
    """MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY: after training, the fused evaluation (boxes and
    masks) and, in the same process, the detector-only one (fusion off, boxes only) into
    OUTPUT_DIR/detector_only, the same figures and detections as an --eval-only run of the saved
    weights with RULE "" and no mask head."""
    # (SEED: the tiny CLIP is random, and built from the seed in each process)
    common = ("MODEL.MASK_ON", "True", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True",
             "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "SEED", "3")  # fmt: skip
    out = tmp_path / "train"
    trained = run_train_net(
        synthetic_root, out, *common, "SOLVER.MAX_ITER", "2",
        "MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY", "True",
    )  # fmt: skip
    assert trained.returncode == 0, (trained.stdout + trained.stderr)[-4000:]
    alone = run_train_net(
        synthetic_root, tmp_path / "alone", "--eval-only", *common,
        "MODEL.WEIGHTS", str(out / "model_final.pth"),
        "MODEL.OVD.FUSION.RULE", "", "MODEL.MASK_ON", "False",
    )  # fmt: skip
    assert alone.returncode == 0, (alone.stdout + alone.stderr)[-4000:]

    fused = _eval_file(out, "eval_results.json")
    only = _eval_file(out, "detector_only", "eval_results.json")
    assert set(fused) == {"bbox", "segm"} and set(only) == {"bbox"}
    assert only == _eval_file(tmp_path / "alone", "eval_results.json")
    detections = ("inference", "ovdet_synthetic_val", "lvis_instances_results.json")
    only_dets = _eval_file(out, "detector_only", *detections)
    assert only_dets and only_dets == _eval_file(tmp_path / "alone", *detections)
    fused_scores = [d["score"] for d in _eval_file(out, *detections)]
    assert fused_scores != [d["score"] for d in only_dets]  # the fusion was on, then off


def test_detector_only_evaluation_without_a_fusion_rule_is_refused(synthetic_root, tmp_path):
    result = run_train_net(
        synthetic_root, tmp_path, "MODEL.OVD.FUSION.RULE", "",
        "MODEL.OVD.FUSION.EVAL_DETECTOR_ONLY", "True",
    )  # fmt: skip
    assert result.returncode != 0
    assert "MODEL.OVD.FUSION.RULE is empty" in result.stderr


def test_unknown_config_key_fails_cleanly(synthetic_root, tmp_path):
    result = run_train_net(synthetic_root, tmp_path, "MODEL.OVD.NOT_A_KEY", "1")
    assert result.returncode != 0
    assert "Non-existent key: MODEL.OVD.NOT_A_KEY" in result.stderr  # Detectron2's message


# Kills tools/train_net.py inside its N-th checkpoint save, after half the file is written: the same
# state a SIGKILL (or power loss) during a checkpoint save leaves behind.
KILL_IN_SAVE = """
import os, runpy, signal, sys, torch
n, calls, save = int(os.environ["OVDET_KILL_AT_SAVE"]), [0], torch.save
def killing_save(obj, f, *args, **kwargs):
    save(obj, f, *args, **kwargs)
    calls[0] += os.path.basename(str(f)).startswith(".tmp-model_")  # checkpoint saves only
    if calls[0] == n:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
        os.kill(os.getpid(), signal.SIGKILL)
torch.save = killing_save
sys.argv = [sys.argv[1]] + sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _load_model_weights(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_kill_during_checkpoint_save_then_resume_matches_uninterrupted_run(
    synthetic_root, trained_run, tmp_path
):
    """A SIGKILL inside a checkpoint save leaves no file corrupt under a final name; the resumed
    run cleans the temporary file up and ends with the uninterrupted run's exact weights."""
    import torch

    out = tmp_path / "killed"
    # the 2nd save is model_0000003.pth: killed with a half-written temporary file
    killed = run_train_net(
        synthetic_root, out, *FAULT_OPTS,
        wrapper=KILL_IN_SAVE, env={"OVDET_KILL_AT_SAVE": "2"},
    )  # fmt: skip
    assert killed.returncode == -9, (killed.stdout + killed.stderr)[-4000:]
    left = sorted(os.listdir(out))
    assert "model_0000003.pth" not in left  # never under its final name
    assert any(f.startswith(".tmp-model_0000003.pth") for f in left), left
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    _load_model_weights(out / "model_0000001.pth")  # the previous checkpoint is intact

    resumed = run_train_net(synthetic_root, out, "--resume", *FAULT_OPTS)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    assert "Removed 1 temporary file(s) left by an interrupted write" in log
    assert not [f for f in os.listdir(out) if f.startswith(".tmp-")]
    for f in os.listdir(out):  # every checkpoint left is complete
        if f.endswith(".pth"):
            _load_model_weights(out / f)
    final, ref = _load_model_weights(out / "model_final.pth"), _load_model_weights(
        trained_run[0] / "model_final.pth"
    )
    assert final.keys() == ref.keys()
    different = [
        k for k in ref if not torch.equal(torch.as_tensor(final[k]), torch.as_tensor(ref[k]))
    ]
    assert not different, different[:5]
