"""Where to crop a region for a small CLIP ViT: region zero-shot accuracy of the val boxes inside
their whole images (as ``benchmarks/region_zero_shot.py``) with the region cut at each stage of
the tower (the seventeenth session's probe behind ``VLM_SCORER.CROP_STAGE: "image"``; RESULTS.md).

    python benchmarks/vit_crop_stage_probe.py --dataset DIR --checkpoint tiny_clip.pt \\
        --variants windows,embed,embed_imagepos,block0_windows,block0,pixels:1+1.5

Variants (the tower's input grid g x g, patch p):

- ``windows``: the benchmark's former RO-ViT scorer (average pool on 64-px windows, stride 32);
- ``embed``: RoIAlign of the patch embeddings to g x g, the native positional embedding, every
  block, the tower's average pool;
- ``embed_imagepos``: the same, the image's resampled positional embedding cropped with them;
- ``block0`` / ``block0_windows``: the first block on the whole image / on 64-px windows,
  RoIAlign of its map to g x g, the other blocks on the crop;
- ``pixels:S1+S2``: the product's scorer with ``CROP_STAGE "image"`` and these box scales
  (``pixels_clipped:...``: the enlarged boxes clipped to the image first).
"""

import argparse
import sys

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.crops import enlarge_boxes
from ovdet_plugin.clip.dense import DenseCLIPViT, interpolate_pos_embed, tile_starts
from ovdet_plugin.clip.text_embeddings import encode_vocabulary
from ovdet_plugin.evaluation.region_zero_shot import category_names, region_zero_shot_accuracy
from ovdet_plugin.evaluation.zero_shot_crops import format_accuracy
from ovdet_plugin.modeling.vlm_scorers import AvgPoolRegionScorer


class StageCropProbe(torch.nn.Module):
    """A region scorer (``scorer(images, boxes=[(R, 4)])``) that crops at ``stage``."""

    def __init__(self, visual, stage: str):
        super().__init__()
        self.visual, self.stage = visual, stage
        self.dense = DenseCLIPViT(visual)
        self.grid, self.patch = self.dense.native_grid[0], self.dense.patch_size[0]

    def _crop(self, fmap, boxes):  # (1, C, h, w) map -> (R, g*g, C) tokens of each box
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
        crops = roi_align(fmap, rois, self.grid, 1.0 / self.patch, -1, True)
        return crops.flatten(2).transpose(1, 2)

    def _pooled(self, tokens):  # (R, 1 + g*g, C) final tokens -> (R, D), the tower's avg pool
        return F.normalize(self.visual.ln_post(tokens[:, 1:]).mean(1) @ self.visual.proj, dim=-1)

    def _block0_map(self, images, window: int):
        d, p = self.dense, self.patch
        if not window:
            x, grid = d.embed(images)
            return d.tokens_to_map(d.run_blocks(x, grid, stop_at=0)[0], grid)
        H, W = images.shape[-2:]
        total = images.new_zeros(1, d.width, H // p, W // p)
        count = images.new_zeros(1, 1, H // p, W // p)
        for y in tile_starts(H, window, window // 2):
            for x0 in tile_starts(W, window, window // 2):
                tokens, grid = d.embed(images[:, :, y : y + window, x0 : x0 + window])
                part = d.tokens_to_map(d.run_blocks(tokens, grid, stop_at=0)[0], grid)
                cells = (..., slice(y // p, (y + window) // p), slice(x0 // p, (x0 + window) // p))
                total[cells] += part
                count[cells] += 1
        return total / count

    @torch.no_grad()
    def forward(self, images, features=None, boxes=(), box_features=None):
        v, d, boxes = self.visual, self.dense, boxes[0]
        cls = (v.class_embedding + v.positional_embedding[0]).view(1, 1, -1)
        if self.stage.startswith("embed"):
            fmap = v.conv1(images)
            if self.stage == "embed_imagepos":
                h, w = fmap.shape[-2:]
                pos = interpolate_pos_embed(v.positional_embedding, d.native_grid, (h, w))[1:]
                fmap = fmap + pos.t().reshape(1, -1, h, w)
            tokens = self._crop(fmap, boxes)
            if self.stage == "embed":
                tokens = tokens + v.positional_embedding[1:]
            x = v.ln_pre(torch.cat([cls.expand(len(tokens), 1, -1), tokens], dim=1))
            return self._pooled(d.run_blocks(x, (self.grid, self.grid))[0])
        window = 64 if self.stage == "block0_windows" else 0
        tokens = self._crop(self._block0_map(images, window), boxes)
        cls0 = d.run_blocks(v.ln_pre(cls), (1, 1), stop_at=0)[0]  # the class token after block 0
        x = torch.cat([cls0.expand(len(tokens), 1, -1), tokens], dim=1)
        for i in range(1, d.num_layers):
            x = d._block(i, x)
        return self._pooled(x)


class ClippedBoxes(torch.nn.Module):
    """The crop scorer at each scale on boxes enlarged and clipped to the image first."""

    def __init__(self, visual, scales):
        super().__init__()
        self.scales = scales
        self.scorer = AvgPoolRegionScorer(visual, crop_stage="image", image_crop_scales=[1.0])

    def forward(self, images, features=None, boxes=(), box_features=None):
        H, W = images.shape[-2:]
        parts = [self.scorer(images, None, enlarge_boxes(boxes[0], s, width=W, height=H))
                 for s in self.scales]  # fmt: skip
        return F.normalize(sum(parts), dim=-1)


def build_variant(visual, name: str):
    kind, _, scales = name.partition(":")
    scales = [float(s) for s in scales.split("+")] if scales else [1.0]
    if kind == "windows":
        return AvgPoolRegionScorer(visual, pooler_resolution=4, window=64, window_stride=32)
    if kind == "pixels":
        return AvgPoolRegionScorer(visual, crop_stage="image", image_crop_scales=scales)
    if kind == "pixels_clipped":
        return ClippedBoxes(visual, scales)
    if kind in ("embed", "embed_imagepos", "block0", "block0_windows"):
        return StageCropProbe(visual, kind)
    raise ValueError(f"Unknown variant {name!r}; see the module docstring.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="LVIS-format folder with <split>.json")
    p.add_argument("--split", default="val")
    p.add_argument("--model-name", default="ovdet-tiny-vit-avg")
    p.add_argument("--checkpoint", required=True, help="the tiny CLIP ViT (open_clip state dict)")
    p.add_argument("--test-size", type=int, default=128, help="the detector's test input side")
    p.add_argument("--variants", default="windows,embed,embed_imagepos,block0_windows,block0,"
                   "pixels:1,pixels:1.5,pixels:1+1.5,pixels_clipped:1+1.5")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = build_clip_model(args.model_name, args.checkpoint).eval()
    names = category_names(args.dataset, args.split)
    text = encode_vocabulary(
        model, get_clip_tokenizer(args.model_name), names, prompts="single", show_progress=False
    )
    size = (args.test_size, args.test_size)
    for name in args.variants.split(","):
        scorer = build_variant(model.visual, name).eval()
        acc = region_zero_shot_accuracy(
            args.dataset, text, scorer, split=args.split, test_size=size
        )
        print(f"{name}: {format_accuracy(acc)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
