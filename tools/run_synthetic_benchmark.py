#!/usr/bin/env python
"""The end-to-end benchmark on the generated dataset (``make demo``; ``make benchmark-synthetic``
adds ``--from-scratch --ablations``). Steps and outputs: see
``benchmarks/synthetic/pipeline.py`` (the repository's :mod:`benchmarks.synthetic`, not part of
the installed package: this tool runs from a source checkout).

    python tools/run_synthetic_benchmark.py                     # default size, shipped tiny CLIP
    python tools/run_synthetic_benchmark.py --from-scratch      # pretrain the tiny CLIP here too
                                  # (tools/generate_synthetic_data.py --pretrain-style scene_crops,
                                  # tools/pretrain_rovit.py configs/pretraining/tiny_synthetic.yaml)
    python tools/run_synthetic_benchmark.py --size smoke --output /tmp/smoke

Steps whose outputs exist for the same settings are reused; delete a step's folder to redo it.
"""

import argparse
import os
import sys

from detectron2.utils.logger import setup_logger

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # benchmarks.synthetic lives in the checkout, not in the package
from benchmarks.synthetic.pipeline import (  # noqa: E402
    DEFAULT_PRETRAIN_VARIANT,
    METHODS,
    PRETRAIN_VARIANTS,
    SIZES,
    SyntheticBenchmark,
    with_size,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/synthetic_benchmark", help="output folder")
    p.add_argument("--size", default="default", choices=sorted(SIZES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--from-scratch", action="store_true", help="pretrain the tiny CLIP here")
    p.add_argument("--clip-checkpoint", default="", help="use this tiny CLIP ViT instead")
    p.add_argument("--clip-rn-checkpoint", default="", help="use this tiny CLIP ResNet instead")
    p.add_argument(
        "--pretrain-variant", default=DEFAULT_PRETRAIN_VARIANT, choices=sorted(PRETRAIN_VARIANTS)
    )
    p.add_argument("--pretrain-steps", type=int, default=0, help="0: the size's default")
    p.add_argument(
        "--pretrain-pool", type=int, default=0, help="caption images; 0: the size's default"
    )
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated: %(default)s")
    p.add_argument(
        "--ablations",
        action="store_true",
        help="also the ablation table (3 seeds of the headline rows, methods §1-4 directions)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (0: one)")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="steps run at once: the two tiny CLIPs (--from-scratch), then the detectors",
    )
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    setup_logger(name="ovdet_plugin")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    overrides = {"pretrain_steps": args.pretrain_steps} if args.pretrain_steps else {}
    if args.pretrain_pool:
        overrides["pretrain_pool"] = args.pretrain_pool
    size = with_size(args.size, **overrides)
    bench = SyntheticBenchmark(
        args.output,
        size,
        seed=args.seed,
        from_scratch=args.from_scratch,
        clip_checkpoint=args.clip_checkpoint,
        clip_rn_checkpoint=args.clip_rn_checkpoint,
        methods=methods,
        pretrain_variant=args.pretrain_variant,
        threads=args.threads,
        jobs=args.jobs,
    )
    report = bench.run()
    if args.ablations:
        from benchmarks.synthetic.ablations import run_ablations

        run_ablations(
            args.output,
            size,
            report["clip"]["path"],
            clip_rn_path=report["clip_rn"]["path"],
            size_name=args.size,
        )


if __name__ == "__main__":
    sys.exit(main())
