"""Ship a tiny CLIP pretrained by ``tools/pretrain_rovit.py`` (with
``configs/pretraining/tiny_synthetic.yaml`` for the ViT, ``tiny_synthetic_rn.yaml`` for the
ResNet) as ``benchmarks/checkpoints/tiny_clip_synthetic.pt`` or ``tiny_clip_rn_synthetic.pt``
(what ``make demo`` starts from; chosen by the run's model name), and write its record beside
it: model name, SHA-256 (checked by the benchmark before use), size, the exact commands (caption
generation, pretraining), seed, the caption data config, the zero-shot crop curve from the run's
metrics.json, machine, date, commit.

``--run`` is either the ``clip`` / ``clip_rn`` step folder of a ``--from-scratch`` benchmark run
(its step.json holds the commands) or the pretraining tool's OUTPUT_DIR (then the commands come
from the step folder around it, or from ``--command`` / ``--caption-command``)::

    python tools/run_synthetic_benchmark.py --from-scratch --output output/synthetic_benchmark_full
    python benchmarks/ship_tiny_clip.py --run output/synthetic_benchmark_full/clip

    python benchmarks/ship_tiny_clip.py --run output/tiny_synthetic_clip \\
        --caption-command "python tools/generate_synthetic_data.py ..." \\
        --command "python tools/pretrain_rovit.py --config-file ..."
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # benchmarks.synthetic lives in the checkout, not in the package
from benchmarks.synthetic.pipeline import (  # noqa: E402
    TINY_CLIPS,
    file_sha256,
    load_step,
    read_zero_shot_curve,
)

MAX_BYTES = 30 * 10**6  # issue 10: the shipped checkpoint is at most 30 MB


def _step_record(run: str) -> Optional[Dict]:
    """The benchmark's clip step record for ``run`` (the step folder, or its pretraining
    OUTPUT_DIR), None when there is none."""
    for folder in (run, os.path.dirname(run)):
        step = load_step(folder)
        record = (step or {}).get("record") or {}
        if "pretrain_dir" in record and (
            folder == run or os.path.abspath(record["pretrain_dir"]) == run
        ):
            return record
    return None


def _machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        model = "unknown CPU"
    return f"{os.cpu_count()}-core {model}"


def _commit() -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return ""
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+local changes" if dirty else "")
    except OSError:
        return ""


def _train_time(output_dir: str) -> str:
    """Detectron2's "Total training time: H:MM:SS" from OUTPUT_DIR/log.txt ("" if absent)."""
    path = os.path.join(output_dir, "log.txt")
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as f:
        found = re.findall(r"Total training time: ([0-9:]+)", f.read())
    return found[-1] if found else ""


def build_record(args) -> Dict:
    """The record (and the checked paths) of the run to ship; raises on a missing piece."""
    from detectron2.config import CfgNode

    run = os.path.abspath(args.run)
    step = _step_record(run)
    output_dir = os.path.abspath(step["pretrain_dir"]) if step else run
    checkpoint = os.path.join(output_dir, "rovit_clip_final.pt")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(
            f"No {checkpoint}: --run must be a finished tools/pretrain_rovit.py OUTPUT_DIR or the "
            "clip step folder of a --from-scratch benchmark run."
        )
    with open(os.path.join(output_dir, "config.yaml"), encoding="utf-8") as f:
        cfg = CfgNode.load_cfg(f)  # the full config the tool ran with (Detectron2's default_setup)
    if step:
        commands = [step["caption_command"], step["command"]]
        caption_data = step["caption_data"]
    else:
        if not (args.command and args.caption_command):
            raise ValueError(
                f"{run} is not inside a benchmark clip step: pass --caption-command and --command "
                "(the commands that made the caption folder and the checkpoint)."
            )
        commands = [args.caption_command, args.command]
        captions = args.captions or cfg.MODEL.OVD.ROVIT.IMAGE_ROOT
        with open(os.path.join(captions, "meta.json"), encoding="utf-8") as f:
            caption_data = json.load(f)["config"]
    record = {
        "model_name": cfg.MODEL.OVD.CLIP.MODEL_NAME,
        "commands": commands,
        "command": " && ".join(commands),
        "seed": int(cfg.SEED),
        "caption_data": caption_data,
        "zero_shot_curve": read_zero_shot_curve(os.path.join(output_dir, "metrics.json")),
        "train_time": _train_time(output_dir),
        "machine": args.machine or _machine(),
        "date": args.date,
        "commit": _commit(),
        "pretrain_dir": output_dir,
    }
    if step:
        record["variant"] = step.get("variant", "")
        if "zero_shot" in step:  # the benchmark's own val crops (reported once)
            record["zero_shot_benchmark_val"] = step["zero_shot"]
    shipped = {t.model_name: t.shipped for t in TINY_CLIPS.values()}
    if record["model_name"] not in shipped:
        raise ValueError(
            f"{record['model_name']} is not one of the benchmark's tiny CLIPs {sorted(shipped)}"
        )
    if not record["zero_shot_curve"]:
        raise ValueError(f"No zero_shot/* scalars in {output_dir}/metrics.json (no eval hook ran)")
    return {"record": record, "checkpoint": checkpoint, "dest": shipped[record["model_name"]]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="clip step folder or pretrain_rovit OUTPUT_DIR")
    p.add_argument("--command", default="", help="the tools/pretrain_rovit.py command line")
    p.add_argument("--caption-command", default="", help="the caption folder's command line")
    p.add_argument("--captions", default="", help="caption folder (default: its IMAGE_ROOT)")
    p.add_argument("--machine", default="", help="default: core count + lscpu's model name")
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    p.add_argument("--dest", default="", help="default: the model's file in benchmarks/checkpoints")
    args = p.parse_args(argv)
    built = build_record(args)
    args.dest = args.dest or built["dest"]
    size = os.path.getsize(built["checkpoint"])
    if size > MAX_BYTES:
        raise ValueError(f"{built['checkpoint']} has {size} bytes, over the {MAX_BYTES} allowed")
    os.makedirs(os.path.dirname(os.path.abspath(args.dest)), exist_ok=True)
    shutil.copyfile(built["checkpoint"], args.dest)
    record = {"sha256": file_sha256(args.dest), "bytes": size, **built["record"]}
    with open(os.path.splitext(args.dest)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"{args.dest}: {size / 2**20:.1f} MiB, sha256 {record['sha256'][:12]}")
    return record


if __name__ == "__main__":
    main()
