"""Why a CLIP's crop skill does or does not reach its region scores: two checks of the avgpool
region scorer (F-VLM's and RO-ViT's, methods §2.3) on a generated dataset's val split.

1. ``--scales``: the ground-truth boxes scored inside the whole val images resized by each scale
   (0.5 puts a 128-px image on the 64-px model's native 8x8 grid: no positional-embedding
   interpolation).
2. Full-box check: each val crop (as the zero-shot crop figure sees it) scored by the region
   scorer with the whole crop as its box, against the image encoder on the same crop, for each
   ``--pooler-resolutions`` (a scorer that equals the encoder here is not the cause of a gap).
3. ``--towers``: the boxes scored at scale 1 on maps from the tower run differently: ``global``
   (as the detectors run it), ``winN`` (attention inside N x N-token windows in every block) or
   ``tileS`` (the tower on its native-size tiles, stride S px, overlapping maps averaged: each
   token sees only its tile, with the native positional embedding).
4. ``--canvas``: each val crop placed in the top-left quarter of a twice-as-large canvas, then
   scored by the avgpool scorer over its own box (every token: 8x8 bins). The canvas is filled
   with ``gray`` or with three other val crops (``crops``), and the tower's positional
   embedding is either resampled to the larger grid (``resampled``, as the detectors run it) or
   the native grid repeated in each quarter (``tiled``: the crop's tokens get exactly the
   embedding they had in pretraining). Against the full-box check (the crop alone, same bins),
   this separates the grid from the other tokens in the attention.

    python benchmarks/region_diagnostics.py --dataset DIR --checkpoint tiny_clip.pt
    python benchmarks/region_diagnostics.py --dataset DIR --checkpoint tiny_clip.pt \
        --scales --pooler-resolutions 8 --canvas gray:resampled gray:tiled crops:tiled
"""

import argparse
from unittest import mock

import torch
import torch.nn.functional as F

from ovdet_plugin.clip import build_clip_model, clip_image_size, get_clip_tokenizer
from ovdet_plugin.clip import dense as dense_module
from ovdet_plugin.clip.crops import normalize_for_clip
from ovdet_plugin.clip.dense import DenseCLIPViT
from ovdet_plugin.clip.text_embeddings import encode_vocabulary
from ovdet_plugin.evaluation.region_zero_shot import region_zero_shot_accuracy
from ovdet_plugin.evaluation.zero_shot_crops import load_crops
from ovdet_plugin.modeling.vlm_scorers import AvgPoolRegionScorer


class LocalTowerScorer(AvgPoolRegionScorer):
    """The avgpool scorer on a tower map computed with local attention (see ``--towers``):
    ``winN`` here, ``tileS`` through the scorer's own windows (``TOWER_WINDOW``: windows of the
    tower's input size ``tile``, stride S)."""

    def __init__(self, visual, variant: str, tile: int, **kwargs):
        if variant.startswith("tile"):
            kwargs.update(window=tile, window_stride=int(variant[4:]))
        super().__init__(visual, **kwargs)
        self.variant = variant

    def tower_map(self, images: torch.Tensor) -> torch.Tensor:
        if not self.variant.startswith("win"):
            return super().tower_map(images)  # global, or the windows of a tileS variant
        x, grid = self.dense.embed(images)
        blocks = range(self.dense.num_layers)
        x, _ = self.dense.run_blocks(
            x, grid, window_size=int(self.variant[3:]), window_block_indexes=blocks
        )
        return DenseCLIPViT.tokens_to_map(x, grid)


def crop_top1(embeddings: torch.Tensor, text: torch.Tensor, crops) -> float:
    """Top-1 % of (N, D) crop embeddings against the (K, D) text rows of ``crops["categories"]``
    (cosine similarity), scored against ``crops["category_ids"]``."""
    truth = torch.tensor(crops["category_ids"])
    ids = torch.tensor([c["id"] for c in crops["categories"]])
    scores = F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).t()
    return 100.0 * (ids[scores.argmax(1)] == truth).float().mean().item()


@torch.no_grad()
def full_box_check(model, text, crops, pooler_resolution: int):
    """(region-scorer top-1 %, image-encoder top-1 %, mean cosine of the two embeddings) on the
    crops, the region being each whole crop."""
    x = normalize_for_clip(crops["images"])
    image = F.normalize(model.encode_image(x), dim=-1)
    scorer = AvgPoolRegionScorer(model.visual, pooler_resolution=pooler_resolution)
    box = torch.tensor([[0.0, 0.0, float(x.shape[-1]), float(x.shape[-2])]])
    region = F.normalize(
        torch.cat([scorer(x[i : i + 1], boxes=box) for i in range(len(x))]), dim=-1
    )
    cosine = F.cosine_similarity(region, image).mean().item()
    return crop_top1(region, text, crops), crop_top1(image, text, crops), cosine


def tiled_pos_embed(pos_embed: torch.Tensor, native_grid, grid) -> torch.Tensor:
    """The native (gh, gw) patch grid of a (1 + gh*gw, C) positional embedding repeated to cover
    (h, w) (multiples of gh, gw), class-token entry first: each native-size tile of the input
    gets the pretraining embedding. (The detectors resample it instead:
    :func:`ovdet_plugin.clip.dense.interpolate_pos_embed`.)"""
    gh, gw = int(native_grid[0]), int(native_grid[1])
    h, w = int(grid[0]), int(grid[1])
    if h % gh or w % gw:
        raise ValueError(f"Grid {h}x{w} is not a multiple of the native grid {gh}x{gw}.")
    patch = pos_embed[1:].reshape(gh, gw, -1).repeat(h // gh, w // gw, 1)
    return torch.cat([pos_embed[:1], patch.reshape(h * w, -1)], dim=0)


def canvas_images(crops: torch.Tensor, index: int, fill: str, generator: torch.Generator):
    """(1, 3, 2S, 2S) canvas with crop ``index`` (of ``crops``: (N, 3, S, S) in [0, 1]) in its
    top-left quarter; the rest gray (``fill`` "gray") or three random other crops ("crops")."""
    n, _, s, _ = crops.shape
    if fill == "gray":
        canvas = crops.new_full((1, 3, 2 * s, 2 * s), 0.5)
        canvas[:, :, :s, :s] = crops[index]
        return canvas
    if fill != "crops":
        raise ValueError(f"Unknown canvas fill {fill!r}: use 'gray' or 'crops'.")
    a, b, c = crops[torch.randint(0, n, (3,), generator=generator)]
    top = torch.cat([crops[index], a], dim=2)
    return torch.cat([top, torch.cat([b, c], dim=2)], dim=1)[None]


@torch.no_grad()
def canvas_check(model, text, crops, fill: str, pos: str, seed: int = 0) -> float:
    """Region-scorer top-1 % of each crop on a canvas (see the module docstring, check 4)."""
    if pos not in ("resampled", "tiled"):
        raise ValueError(f"Unknown positional embedding {pos!r}: use 'resampled' or 'tiled'.")
    images = crops["images"]
    size = images.shape[-1]
    scorer = AvgPoolRegionScorer(model.visual, pooler_resolution=8).eval()
    box = torch.tensor([[0.0, 0.0, float(size), float(size)]])
    generator = torch.Generator().manual_seed(seed)
    resample = tiled_pos_embed if pos == "tiled" else dense_module.interpolate_pos_embed
    with mock.patch.object(dense_module, "interpolate_pos_embed", resample):
        region = torch.cat(
            [
                scorer(normalize_for_clip(canvas_images(images, i, fill, generator)), boxes=box)
                for i in range(len(images))
            ]
        )
    return crop_top1(region, text, crops)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True)
    p.add_argument("--model-name", default="ovdet-tiny-vit-avg")
    p.add_argument("--checkpoint", required=True, help="open_clip state dict")
    p.add_argument("--scales", type=float, nargs="*", default=[1.0, 0.5])
    p.add_argument("--pooler-resolutions", type=int, nargs="*", default=[4, 8])
    p.add_argument("--towers", nargs="*", default=[], help="e.g. global win8 win4 tile64 tile32")
    p.add_argument(
        "--canvas",
        nargs="*",
        default=[],
        help="FILL:POS pairs, FILL gray or crops, POS resampled or tiled (check 4)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    model = build_clip_model(args.model_name, args.checkpoint).eval()
    tokenizer = get_clip_tokenizer(args.model_name)
    crops = load_crops(args.dataset, clip_image_size(model)[0])
    names = [c["name"] for c in crops["categories"]]
    text = encode_vocabulary(model, tokenizer, names, prompts="single", show_progress=False)
    scorer = AvgPoolRegionScorer(model.visual, pooler_resolution=4)
    for scale in args.scales:
        acc = region_zero_shot_accuracy(args.dataset, text, scorer, scale=scale)["all"]
        print(f"boxes in the whole image x{scale}: region top-1 {acc:.1f}%")
    for res in args.pooler_resolutions:
        region, image, cos = full_box_check(model, text, crops, res)
        print(f"full-box check, pooler {res}x{res}: region {region:.1f}%, encoder {image:.1f}%, "
              f"cosine {cos:.4f}")  # fmt: skip
    for variant in args.towers:
        local = LocalTowerScorer(
            model.visual, variant, clip_image_size(model)[0], pooler_resolution=4
        )
        acc = region_zero_shot_accuracy(args.dataset, text, local)["all"]
        print(f"boxes in the whole image, tower {variant}: region top-1 {acc:.1f}%")
    for spec in args.canvas:
        fill, _, pos = spec.partition(":")
        pos = pos or "resampled"
        acc = canvas_check(model, text, crops, fill, pos)
        print(f"crop on a 2x canvas, {fill} around it, {pos} positions: region top-1 {acc:.1f}%")


if __name__ == "__main__":
    main()
