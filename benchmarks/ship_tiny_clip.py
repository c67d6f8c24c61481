"""Copy a tiny CLIP made by ``benchmarks/pretrain_tiny_clip.py`` to
``benchmarks/checkpoints/tiny_clip_synthetic.pt`` (what ``make demo`` starts from) and write its
record beside it: the command and seed that made it, the generator config of its data, its
zero-shot crop accuracy, its SHA-256 (checked by the benchmark before use) and its size.

    python benchmarks/ship_tiny_clip.py --checkpoint A.pt --log A.json --dataset DIR \\
        --command "python benchmarks/pretrain_tiny_clip.py ..." --machine "2-core CPU"
"""

import argparse
import json
import os
import shutil
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # benchmarks.synthetic lives in the checkout, not in the package
from benchmarks.synthetic.pipeline import CLIP_MODEL_NAME, SHIPPED_CLIP, file_sha256  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--log", required=True, help="the --log JSON of the pretraining run")
    p.add_argument("--dataset", required=True, help="the generated dataset it was trained on")
    p.add_argument("--command", required=True, help="the commands that made the dataset and it")
    p.add_argument("--machine", required=True)
    p.add_argument("--date", default=time.strftime("%Y-%m-%d"))
    args = p.parse_args(argv)
    with open(args.log, encoding="utf-8") as f:
        run = json.load(f)
    with open(os.path.join(args.dataset, "meta.json"), encoding="utf-8") as f:
        data_config = json.load(f)["config"]
    os.makedirs(os.path.dirname(SHIPPED_CLIP), exist_ok=True)
    shutil.copyfile(args.checkpoint, SHIPPED_CLIP)
    size = os.path.getsize(SHIPPED_CLIP)
    final = [h for h in run["history"] if "prompts" not in h][-1]
    record = {
        "model_name": run["args"]["model_name"],
        "sha256": file_sha256(SHIPPED_CLIP),
        "bytes": size,
        "command": args.command,
        "seed": run["args"]["seed"],
        "pretrain_args": run["args"],
        "data_config": data_config,
        "train_seconds": run["train_seconds"],
        "zero_shot_val_crops": final["accuracy"],
        "accuracy_history": run["history"],
        "machine": args.machine,
        "date": args.date,
    }
    assert record["model_name"] == CLIP_MODEL_NAME, record["model_name"]
    with open(os.path.splitext(SHIPPED_CLIP)[0] + ".json", "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"{SHIPPED_CLIP}: {size / 2**20:.1f} MiB, sha256 {record['sha256'][:12]}")


if __name__ == "__main__":
    main()
