"""Zero-shot crop accuracy of a CLIP model on a generated dataset (the first figure of the
generated-data benchmark; the code is ``ovdet_plugin.evaluation.zero_shot_crops``).

    .venv/bin/python benchmarks/zero_shot_crops.py --dataset /tmp/zs/ds_a \\
        --model-name ovdet-tiny-vit-avg --checkpoint ckpt.pt --prompts single
"""

import argparse
import json
import sys
import time
from typing import Dict, List, Optional

import torch

from ovdet_plugin.clip import build_clip_model, clip_image_size, get_clip_tokenizer
from ovdet_plugin.evaluation.zero_shot_crops import format_accuracy, load_crops, zero_shot_accuracy


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="generated dataset folder")
    p.add_argument("--model-name", default="ovdet-tiny-vit", help="open_clip architecture")
    p.add_argument("--checkpoint", default="", help="open_clip state dict ('' = random init)")
    p.add_argument("--prompts", default="single", choices=["single", "vild", "clip"])
    p.add_argument("--split", default="val")
    p.add_argument("--min-visible", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="", help="also write the result to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = build_clip_model(args.model_name, args.checkpoint)
    tokenizer = get_clip_tokenizer(args.model_name)
    crops = load_crops(args.dataset, clip_image_size(model)[0], args.split, args.min_visible)
    acc = zero_shot_accuracy(model, tokenizer, crops, prompts=args.prompts)
    print(f"{args.model_name} {args.checkpoint or '(random)'} prompts={args.prompts}")
    print(format_accuracy(acc), f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "accuracy": acc}, f, indent=1)
    return acc


if __name__ == "__main__":
    main(sys.argv[1:])
