#!/usr/bin/env python
"""Generate the synthetic open-vocabulary dataset (see datasets/README.md, section
"Generated dataset (ovdet_synthetic)").

Example::

    python tools/generate_synthetic_data.py --out datasets/ovdet_synthetic --seed 0
    python tools/generate_synthetic_data.py --out /tmp/tiny --num-train 100 --num-val 20 \
        --num-pretrain 200
    python tools/generate_synthetic_data.py --out /tmp/captions --pretrain-style scene_crops \
        --num-pretrain 100000          # the tiny CLIP's caption images
    python tools/generate_synthetic_data.py --out /tmp/mine --coco-format   # + COCO-format files
"""

import argparse
import dataclasses
import json
import os
import sys

from ovdet_plugin.data.synthetic import SyntheticConfig, generate_synthetic_dataset
from ovdet_plugin.data.synthetic.coco_export import export_coco_format


def main(argv=None) -> int:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        default=os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "ovdet_synthetic"),
        help="dataset folder (default: $DETECTRON2_DATASETS/ovdet_synthetic)",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--num-train", type=int, default=defaults.num_train)
    parser.add_argument("--num-val", type=int, default=defaults.num_val)
    parser.add_argument("--num-pretrain", type=int, default=defaults.num_pretrain)
    parser.add_argument("--image-size", type=int, default=defaults.image_size)
    parser.add_argument("--pretrain-image-size", type=int, default=defaults.pretrain_image_size)
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects)
    parser.add_argument(
        "--pretrain-style",
        choices=["objects", "scene_crops"],
        default=defaults.pretrain_style,
        help="caption images: small images of whole objects with varied captions, or crops "
        "around the objects of detection-like scenes (the tiny-CLIP recipe, "
        "configs/pretraining/tiny_synthetic.yaml)",
    )
    parser.add_argument("--image-format", choices=["png", "jpg"], default=defaults.image_format)
    parser.add_argument("--segmentation", choices=["polygon", "rle"], default=defaults.segmentation)
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset made with another config"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--coco-format",
        action="store_true",
        help="also write OUT/annotations/{train,val}.json and OUT/annotations/novel.txt (plain "
        "COCO format and a split file: the README's 'Train on your own data' walkthrough)",
    )
    args = parser.parse_args(argv)

    config = dataclasses.replace(
        defaults,
        seed=args.seed,
        num_train=args.num_train,
        num_val=args.num_val,
        num_pretrain=args.num_pretrain,
        image_size=args.image_size,
        pretrain_image_size=args.pretrain_image_size,
        max_objects=args.max_objects,
        pretrain_style=args.pretrain_style,
        image_format=args.image_format,
        segmentation=args.segmentation,
    )
    try:
        meta = generate_synthetic_dataset(
            args.out, config, overwrite=args.overwrite, progress=not args.no_progress
        )
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.coco_format:
        meta["counts"]["coco_format"] = export_coco_format(args.out)
    print(json.dumps({"out": os.path.abspath(args.out), **meta["counts"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
