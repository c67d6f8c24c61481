"""Label precision of a finished generated-data benchmark run at several drawing thresholds: for
each method (fused and detector only), of the detections a picture would draw (score >= the
threshold, the 6 highest per image), the share named as an overlapping ground-truth object of
the same class (``ovdet_plugin.evaluation.label_precision``), with the count drawn and the count
correct (a picture that draws nothing is trivially precise).

It reads the evaluator's saved detections of each method's folder, so no model runs. Choose a
threshold on one run's split (e.g. an ablation seed, ``<out>/ablations/seed1``) and report the
benchmark's val split once.

    python benchmarks/label_precision_thresholds.py --run output/synthetic_benchmark/ablations/seed1
"""

import argparse
import json
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # benchmarks.synthetic lives in the checkout, not in the package
from benchmarks.synthetic.pipeline import (  # noqa: E402
    ALL_METHODS,
    PICTURE_TOP_K,
    evaluator_detections_path,
)
from ovdet_plugin.evaluation import label_precision  # noqa: E402


def precision_table(run_dir, thresholds, top_k=PICTURE_TOP_K):
    """method title (+ ", detector only") -> [label_precision(...) per threshold], for every
    method whose folder holds the evaluator's val detections (a run still going: those done)."""
    gt_path = os.path.join(run_dir, "datasets", "ovdet_synthetic", "val.json")
    with open(gt_path, encoding="utf-8") as f:
        gt = json.load(f)
    table = {}
    for key, method in ALL_METHODS.items():  # the methods the run has evaluated
        title = method.title
        for suffix, sub in (("", ""), (", detector only", "detector_only")):
            path = evaluator_detections_path(os.path.join(run_dir, key, sub))
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                dets = json.load(f)
            table[title + suffix] = [label_precision(dets, gt, t, top_k) for t in thresholds]
    return table


def format_table(table, thresholds):
    def cell(lp):
        if not lp["n"]:
            return "- (0)"
        rare = "-" if lp["rare_precision"] is None else f"{lp['rare_precision']:.0f}"
        return f"{lp['precision']:.0f}% ({lp['correct']}/{lp['n']}; rare {rare}%)"

    lines = [
        "| method | " + " | ".join(f"score >= {t:g}" for t in thresholds) + " |",
        "|---|" + "---|" * len(thresholds),
    ]
    lines += [
        f"| {name} | " + " | ".join(cell(lp) for lp in row) + " |" for name, row in table.items()
    ]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="a tools/run_synthetic_benchmark.py output folder")
    p.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    )
    p.add_argument("--top-k", type=int, default=PICTURE_TOP_K)
    args = p.parse_args(argv)
    print(format_table(precision_table(args.run, args.thresholds, args.top_k), args.thresholds))


if __name__ == "__main__":
    main()
