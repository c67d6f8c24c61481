"""Zero-shot crop accuracy of a CLIP model on a generated dataset (the first figure of the
generated-data benchmark) or on any registered dataset (your own data); the code is
``ovdet_plugin.evaluation.zero_shot_crops``.

    .venv/bin/python benchmarks/zero_shot_crops.py --dataset /tmp/zs/ds_a \\
        --model-name ovdet-tiny-vit-avg --checkpoint ckpt.pt --prompts single
    .venv/bin/python benchmarks/zero_shot_crops.py --registered-dataset my_val \\
        --register-dataset "name=my_val,format=coco,json=val.json,images=img,novel=cat;dog" \\
        --model-name ViT-B-32 --checkpoint ViT-B-32.pt --prompts vild
"""

import argparse
import json
import sys
import time
from typing import Dict, List, Optional

import torch

from ovdet_plugin.clip import build_clip_model, clip_image_size, get_clip_tokenizer
from ovdet_plugin.data.datasets import add_dataset_arguments, register_dataset_spec
from ovdet_plugin.evaluation.zero_shot_crops import (
    format_accuracy,
    load_crops,
    load_dataset_crops,
    zero_shot_accuracy,
)


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", help="generated dataset folder")
    source.add_argument(
        "--registered-dataset",
        metavar="NAME",
        help="any registered dataset (built-in, or yours with --register-dataset): its boxes",
    )
    add_dataset_arguments(p)
    p.add_argument("--max-crops", type=int, default=0, help="registered dataset: at most (0: all)")
    p.add_argument("--model-name", default="ovdet-tiny-vit", help="open_clip architecture")
    p.add_argument("--checkpoint", default="", help="open_clip state dict ('' = random init)")
    p.add_argument("--prompts", default="single", choices=["single", "vild", "clip"])
    p.add_argument("--split", default="val", help="generated dataset: the split")
    p.add_argument("--min-visible", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="", help="also write the result to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = build_clip_model(args.model_name, args.checkpoint)
    tokenizer = get_clip_tokenizer(args.model_name)
    size = clip_image_size(model)[0]
    if args.registered_dataset:
        for spec in args.register_dataset:
            register_dataset_spec(spec)
        crops = load_dataset_crops(args.registered_dataset, size, max_crops=args.max_crops or None)
    else:
        crops = load_crops(args.dataset, size, args.split, args.min_visible)
    acc = zero_shot_accuracy(model, tokenizer, crops, prompts=args.prompts)
    print(f"{args.model_name} {args.checkpoint or '(random)'} prompts={args.prompts}")
    print(format_accuracy(acc), f"({time.perf_counter() - start:.1f} s)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "accuracy": acc}, f, indent=1)
    return acc


if __name__ == "__main__":
    main(sys.argv[1:])
