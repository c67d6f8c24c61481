#!/usr/bin/env python
"""Fault test of tools/train_net.py: SIGKILL it at random moments (and once inside a checkpoint
save), resume each time, and compare with an uninterrupted run.

    python benchmarks/fault_test_train_net.py --kills 5 --seed 0

Checks: the final weights equal the uninterrupted run's exactly; every .pth left in the output
folder loads; no temporary file is left. Prints one summary line (the figure recorded in
benchmarks/RESULTS.md). Uses the tiny F-VLM test config on a small generated dataset (CPU).
"""

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from test_train_net import KILL_IN_SAVE  # noqa: E402  (the in-suite test's kill-in-save wrapper)

from ovdet_plugin.data.synthetic.generator import generate_synthetic_dataset  # noqa: E402


def command(out, opts, wrapper=None):
    return [
        sys.executable, *(["-c", wrapper] if wrapper else []),
        os.path.join(REPO, "tools", "train_net.py"),
        "--config-file", os.path.join(REPO, "configs", "test", "tiny_fvlm.yaml"),
        *opts, "MODEL.META_ARCHITECTURE", "OVDetGeneralizedRCNN",
        "DATASETS.TRAIN", '("ovdet_synthetic_train",)', "DATASETS.TEST", "()",
        "MODEL.OVD.TRAIN_VOCABULARY", "dataset:ovdet_synthetic_train",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.001", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MIN_SIZE_TEST", "96", "OUTPUT_DIR", str(out),
    ]  # fmt: skip


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kills", type=int, default=5, help="random SIGKILLs before the last resume")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--period", type=int, default=3, help="SOLVER.CHECKPOINT_PERIOD")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    args = p.parse_args()
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="ovdet_fault_")
    generate_synthetic_dataset(os.path.join(work, "ovdet_synthetic"), num_train=12, num_val=2,
                               num_pretrain=0, image_size=96, progress=False)  # fmt: skip
    env = dict(os.environ, DETECTRON2_DATASETS=work, PYTHONPATH=REPO,
               OVDET_CACHE=os.path.join(work, "cache"))  # fmt: skip
    opts = ["SOLVER.MAX_ITER", str(args.iters), "SOLVER.CHECKPOINT_PERIOD", str(args.period),
            "SEED", "5", "MODEL.OVD.CHECKPOINT.MAX_TO_KEEP", "2"]  # fmt: skip
    start = time.time()
    subprocess.run(command(os.path.join(work, "ref"), opts), env=env, check=True,
                   capture_output=True)  # fmt: skip
    ref_s = time.time() - start
    out = os.path.join(work, "faulty")
    # one kill inside a checkpoint save, then random kills anywhere in the run
    first = subprocess.run(command(out, opts, KILL_IN_SAVE), capture_output=True,
                           env=dict(env, OVDET_KILL_AT_SAVE="2"))  # fmt: skip
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    kills = [("in save #2", first.returncode)]
    for _ in range(args.kills):
        proc = subprocess.Popen(command(out, ["--resume", *opts]), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        delay = rng.uniform(2.0, ref_s)
        try:
            proc.wait(timeout=delay)
            kills.append((f"finished before {delay:.1f}s", proc.returncode))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills.append((f"killed at {delay:.1f}s", proc.wait()))
    last = subprocess.run(command(out, ["--resume", *opts]), env=env, capture_output=True)
    assert last.returncode == 0, last.stderr[-3000:]
    left = os.listdir(out)
    tmp = [f for f in left if f.startswith(".tmp-")]
    for f in left:
        if f.endswith(".pth"):
            weights(os.path.join(out, f))  # raises if corrupt
    a, b = weights(os.path.join(work, "ref", "model_final.pth")), weights(
        os.path.join(out, "model_final.pth")
    )
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    print(f"kills: {kills}")
    print(f"checkpoints left: {sorted(f for f in left if f.endswith('.pth'))}")
    print(
        f"RESULT: {len(kills)} interruptions, final weights equal to the uninterrupted run: "
        f"{same}; corrupt files: 0; temporary files left: {len(tmp)}; "
        f"uninterrupted run {ref_s:.0f} s, total {time.time() - start:.0f} s"
    )
    sys.exit(0 if same and not tmp else 1)


if __name__ == "__main__":
    main()
