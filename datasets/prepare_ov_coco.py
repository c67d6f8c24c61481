#!/usr/bin/env python
"""Write the OV-COCO generalized validation file (65 classes) from the standard COCO 2017 one.

    python datasets/prepare_ov_coco.py            # reads/writes under $DETECTRON2_DATASETS
    python datasets/prepare_ov_coco.py --root /data --train   # also a 48-class training file

See datasets/README.md, section "OV-COCO".
"""

import argparse
import os
import sys

from ovdet_plugin.data.datasets.coco_ov import make_ov_coco_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        default=os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")),
        help="data root holding coco/annotations (default: $DETECTRON2_DATASETS or ./datasets)",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="also write instances_train2017_ov48.json (base classes only; optional: "
        "coco_2017_ov_train filters the standard file at load time)",
    )
    args = parser.parse_args(argv)
    ann = os.path.join(args.root, "coco", "annotations")
    jobs = [("instances_val2017.json", "instances_val2017_ov65.json", False)]
    if args.train:
        jobs.append(("instances_train2017.json", "instances_train2017_ov48.json", True))
    for src, dst, base_only in jobs:
        try:
            counts = make_ov_coco_json(
                os.path.join(ann, src), os.path.join(ann, dst), base_only=base_only
            )
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"{os.path.join(ann, dst)}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
