"""Zero-shot classification of ground-truth boxes inside whole val images by a VLM region scorer
(the score F-VLM / F-ViT / RO-ViT fuse at test time), against the same objects as isolated crops.

If the region accuracy is far below the crop accuracy (``benchmarks/zero_shot_crops.py``), the
VLM's skill does not reach the detector: the fused score cannot help novel classes.

    python benchmarks/region_zero_shot.py --dataset DIR --checkpoint tiny_clip.pt --scorer avgpool
"""

import argparse
import json
import os
import sys
from collections import defaultdict

import cv2
import torch

from ovdet_plugin.clip import CLIP_MEAN, CLIP_STD, build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.text_embeddings import encode_vocabulary
from ovdet_plugin.evaluation.zero_shot_crops import format_accuracy, group_accuracy
from ovdet_plugin.modeling.vlm_scorers import (
    AttnPoolRegionScorer,
    AvgPoolRegionScorer,
    DenseRegionScorer,
)


def region_accuracy(dataset_dir, model, tokenizer, scorer, split="val", prompts="single"):
    """Accuracy per frequency group (as ``group_accuracy``) of the scorer's embeddings of every
    ground-truth box of ``split``, classified among all the dataset's category names."""
    with open(os.path.join(dataset_dir, f"{split}.json"), encoding="utf-8") as f:
        data = json.load(f)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    frequency = {c["id"]: c["frequency"] for c in cats}
    text = encode_vocabulary(model, tokenizer, [c["name"] for c in cats], prompts=prompts)
    by_image = defaultdict(list)
    for a in data["annotations"]:
        by_image[a["image_id"]].append(a)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    predicted, true = [], []
    for img in data["images"]:
        anns = by_image.get(img["id"], [])
        if not anns:
            continue
        bgr = cv2.imread(os.path.join(dataset_dir, img["file_name"]), cv2.IMREAD_COLOR)
        x = torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1).float() / 255.0
        x = ((x - mean) / std)[None]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in anns])  # fmt: skip
        predicted += [cats[i]["id"] for i in (scorer(x, boxes=boxes) @ text.t()).argmax(1).tolist()]
        true += [a["category_id"] for a in anns]
    return group_accuracy(predicted, true, [frequency[c] for c in true])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--model-name", default="ovdet-tiny-vit-avg")
    p.add_argument("--checkpoint", required=True, help="open_clip state dict")
    p.add_argument("--scorer", default="avgpool", choices=["avgpool", "dense", "attnpool"])
    p.add_argument("--pooler-resolution", type=int, default=4)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = build_clip_model(args.model_name, args.checkpoint).eval()
    tokenizer = get_clip_tokenizer(args.model_name)
    if args.scorer == "avgpool":
        scorer = AvgPoolRegionScorer(model.visual, pooler_resolution=args.pooler_resolution)
    elif args.scorer == "attnpool":  # F-VLM's scorer on a CLIP ResNet (its own grid)
        scorer = AttnPoolRegionScorer(model.visual)
    else:
        scorer = DenseRegionScorer(model.visual)
    acc = region_accuracy(args.dataset, model, tokenizer, scorer)
    print(f"{args.scorer} {os.path.basename(args.checkpoint)}: {format_accuracy(acc)}")
    return acc


if __name__ == "__main__":
    main(sys.argv[1:])
