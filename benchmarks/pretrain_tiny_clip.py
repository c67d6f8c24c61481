"""Pretrain a tiny open_clip model on a generated dataset's captions, in memory, on the CPU (the
loop is ``ovdet_plugin.pretraining.in_memory``; ``--help`` lists its options). The command that
made the shipped checkpoint is in ``benchmarks/RESULTS.md``.

    python benchmarks/pretrain_tiny_clip.py --dataset DIR --model-name ovdet-tiny-vit-avg \\
        --plain-captions --loss multipos --steps 10000 --out tiny_clip.pt
"""

import sys

from ovdet_plugin.pretraining.in_memory import main

if __name__ == "__main__":
    main(sys.argv[1:])
