"""Does the benchmark's detector learn? The F-VLM oracle (every class's boxes, detector only) under
named training recipes, each run by ``tools/train_net.py`` with ``configs/synthetic/fvlm.yaml`` and
scored by the stock LVISEvaluator (box AP on the val split of the chosen dataset root).

The recipes are config overrides on top of the current ``configs/synthetic/Base-Synthetic.yaml``
(``current`` adds none); ``old`` is the recipe before issue 10's detector change (SGD lr 0.02,
batch 8 x 600, one ViT block for every level, FC 128). Choose a recipe on another generated split
than the benchmark's (``tools/generate_synthetic_data.py --seed 1``), as RESULTS.md does.

    python benchmarks/detector_recipe.py --datasets-root <root holding ovdet_synthetic/> \
        --clip-checkpoint benchmarks/checkpoints/tiny_clip_synthetic.pt --recipes old current
"""

import argparse
import json
import os
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # benchmarks.synthetic lives in the checkout, not in the package
from benchmarks.synthetic.pipeline import CONFIG_DIR, METHODS, TOOLS_DIR  # noqa: E402

ORACLE = METHODS["fvlm_oracle"]  # the benchmark's oracle row: its config and overrides
_SGD_8x600 = [
    "MODEL.OVD.SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.02", "SOLVER.WEIGHT_DECAY", "0.0001",
    "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "600", "SOLVER.STEPS", "(480,)",
]  # fmt: skip
_ADAMW_8x600 = ["SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "600", "SOLVER.STEPS", "(480,)"]
_ONE_BLOCK = ["MODEL.OVD.BACKBONE.VIT_OUT_INDICES", "[1, 1, 1]"]
_FC128 = ["MODEL.ROI_BOX_HEAD.FC_DIM", "128"]
RECIPES = {
    "old": _SGD_8x600 + _ONE_BLOCK + _FC128,
    "adamw_8x600": _ADAMW_8x600 + _ONE_BLOCK + _FC128,
    "adamw_8x600_blocks": _ADAMW_8x600 + _FC128,
    "adamw_4x1200_fc128": _FC128,
    "current": [],
    # shorter schedules of the current recipe, to fit make demo in 15 minutes
    "adamw_4x1000": ["SOLVER.MAX_ITER", "1000", "SOLVER.STEPS", "(800,)"],
    "adamw_4x900": ["SOLVER.MAX_ITER", "900", "SOLVER.STEPS", "(720,)"],
}


def run_recipe(name, args):
    out = os.path.join(args.output, name)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, DETECTRON2_DATASETS=os.path.abspath(args.datasets_root))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "2")
    cmd = [sys.executable, os.path.join(TOOLS_DIR, "train_net.py"), "--config-file",
           os.path.join(CONFIG_DIR, ORACLE.config),
           "MODEL.OVD.CLIP.PRETRAINED", os.path.abspath(args.clip_checkpoint),
           "SEED", str(args.seed), *ORACLE.opts, *RECIPES[name], "OUTPUT_DIR", out]  # fmt: skip
    start = time.time()
    with open(os.path.join(out, "train.log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, env=env)
    with open(os.path.join(out, "eval_results.json")) as f:
        bbox = json.load(f)["bbox"]
    return {"recipe": name, "seconds": round(time.time() - start), "overrides": RECIPES[name],
            **{k: round(bbox[k], 1) for k in ("AP", "APr", "APc", "APf")}}  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets-root", required=True, help="folder holding ovdet_synthetic/")
    p.add_argument("--clip-checkpoint", required=True)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="output/detector_recipe")
    args = p.parse_args(argv)
    rows = []
    for name in args.recipes:
        rows.append(run_recipe(name, args))
        r = rows[-1]
        print(f"{name}: AP {r['AP']} APr {r['APr']} APc {r['APc']} APf {r['APf']} "
              f"({r['seconds']} s)", flush=True)  # fmt: skip
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
