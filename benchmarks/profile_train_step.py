"""Where a detector's training iteration spends its time: ``torch.profiler`` over a few
iterations of ``tools/train_net.py``'s trainer (the same config, overrides and datasets), after
warm-up iterations, printed as the ops with the most self CPU time.

    DETECTRON2_DATASETS=output/synthetic_benchmark/datasets OMP_NUM_THREADS=1 \\
    python benchmarks/profile_train_step.py --config-file configs/synthetic/fvlm.yaml \\
        MODEL.OVD.CLIP.PRETRAINED benchmarks/checkpoints/tiny_clip_rn_synthetic.pt

Nothing is saved but Detectron2's config and log in OUTPUT_DIR (default: a temporary folder).
"""

import argparse
import sys
import tempfile

import torch
from detectron2.engine import default_argument_parser
from detectron2.utils.events import EventStorage
from torch.profiler import ProfilerActivity, profile

import ovdet_plugin  # noqa: F401  (registers the plugin)
from ovdet_plugin.engine import OVDTrainer, setup_ovdet_cfg


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--warmup", type=int, default=15, help="iterations before profiling")
    p.add_argument("--iters", type=int, default=30, help="iterations profiled")
    p.add_argument("--rows", type=int, default=20, help="ops printed")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (KEY VALUE ...)")
    args = p.parse_args(argv)
    opts = list(args.opts)
    if "OUTPUT_DIR" not in opts[::2]:
        opts += ["OUTPUT_DIR", tempfile.mkdtemp(prefix="ovdet_profile_")]
    d2_args = default_argument_parser().parse_args(["--config-file", args.config_file, *opts])
    trainer = OVDTrainer(setup_ovdet_cfg(d2_args))
    trainer.resume_or_load(resume=False)
    with EventStorage(0) as storage:

        def step(i: int) -> None:
            trainer.iter = storage.iter = i
            trainer.run_step()

        for i in range(args.warmup):
            step(i)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(args.warmup, args.warmup + args.iters):
                step(i)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    total_ms = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1000.0
    print(table)
    print(f"{total_ms / args.iters:.0f} ms of self CPU time per iteration over {args.iters}")
    print(f"torch threads: {torch.get_num_threads()}")


if __name__ == "__main__":
    main(sys.argv[1:])
