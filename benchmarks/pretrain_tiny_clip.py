"""Pretrain a tiny open_clip model on a generated dataset's captions, in memory, on the CPU (the
loop is ``benchmarks/synthetic/pretrain_in_memory.py``; ``--help`` lists its options). The
command that made the shipped checkpoint is in ``benchmarks/RESULTS.md``.

    python benchmarks/pretrain_tiny_clip.py --dataset DIR --model-name ovdet-tiny-vit-avg \\
        --plain-captions --loss multipos --steps 10000 --out tiny_clip.pt
"""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # benchmarks.synthetic lives in the checkout, not in the package
from benchmarks.synthetic.pretrain_in_memory import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
