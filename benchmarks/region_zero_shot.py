"""Zero-shot classification of ground-truth boxes inside whole val images by a VLM region scorer
(the score F-VLM / F-ViT / RO-ViT fuse at test time), against the same objects as isolated crops.

If the region accuracy is far below the crop accuracy (``benchmarks/zero_shot_crops.py``), the
VLM's skill does not reach the detector: the fused score cannot help novel classes.

    # a scorer by name on a tiny CLIP checkpoint
    python benchmarks/region_zero_shot.py --dataset DIR --checkpoint tiny_clip.pt --scorer avgpool
    # the scorer a detector config fuses, as the detector builds it (tower, crop convention),
    # on the images resized to the config's test input (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)
    python benchmarks/region_zero_shot.py --dataset DIR --config-file configs/synthetic/fvlm.yaml \
        MODEL.OVD.CLIP.PRETRAINED benchmarks/checkpoints/tiny_clip_rn_synthetic.pt

``--scale S`` resizes each image and its boxes by S on top of that (a probe of the scale the
scorer works best at).

``tools/run_synthetic_benchmark.py`` reports the second form for every fused method.
"""

import argparse
import os
import sys

import torch

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.text_embeddings import encode_vocabulary
from ovdet_plugin.evaluation.region_zero_shot import (
    category_names,
    method_region_zero_shot,
    region_zero_shot_accuracy,
)
from ovdet_plugin.evaluation.zero_shot_crops import format_accuracy
from ovdet_plugin.modeling.vlm_scorers import (
    AttnPoolRegionScorer,
    AvgPoolRegionScorer,
    DenseRegionScorer,
)

SCORERS = {
    "avgpool": AvgPoolRegionScorer,
    "attnpool": AttnPoolRegionScorer,
    "dense": DenseRegionScorer,
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="LVIS-format folder with <split>.json")
    p.add_argument("--split", default="val")
    p.add_argument("--config-file", default="", help="score with this detector config's scorer")
    p.add_argument("--model-name", default="ovdet-tiny-vit-avg")
    p.add_argument("--checkpoint", default="", help="open_clip state dict (without a config)")
    p.add_argument("--scorer", default="avgpool", choices=sorted(SCORERS))
    p.add_argument("--pooler-resolution", type=int, default=4)
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="a probe: resize each image and its boxes (after a config's test resize)",
    )
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides (with a config)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.config_file:
        from ovdet_plugin.config import get_ovdet_cfg

        cfg = get_ovdet_cfg(args.config_file, args.opts)
        acc = method_region_zero_shot(cfg, args.dataset, args.split, scale=args.scale)
        label = f"{cfg.MODEL.OVD.VLM_SCORER.NAME} ({os.path.basename(args.config_file)})"
    else:
        if not args.checkpoint:
            p.error("give --checkpoint (with --scorer), or --config-file")
        model = build_clip_model(args.model_name, args.checkpoint).eval()
        text = encode_vocabulary(
            model, get_clip_tokenizer(args.model_name), category_names(args.dataset, args.split),
            prompts="single",
        )  # fmt: skip
        res = args.pooler_resolution if args.scorer == "avgpool" else 0
        scorer = SCORERS[args.scorer](model.visual, pooler_resolution=res).eval()
        acc = region_zero_shot_accuracy(
            args.dataset, text, scorer, split=args.split, scale=args.scale
        )
        label = f"{args.scorer} {os.path.basename(args.checkpoint)}"
    if args.scale != 1.0:
        label += f", images x{args.scale:g}"
    print(f"{label}: {format_accuracy(acc)}")
    if "top_name" in acc:
        print(
            f"most frequent answer: {acc['top_name']}, {acc['top_share']:.1f}% of the boxes "
            f"(an even spread over the names: {acc['even_share']:.1f}% each)"
        )
    return acc


if __name__ == "__main__":
    main(sys.argv[1:])
