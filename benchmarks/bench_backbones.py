"""Forward time and peak memory of the CLIP backbones next to Detectron2's own, on this machine.

Measures, at 512x512 and 1024x1024 (batch 1, random weights: the architecture is what matters
for speed):

- ``ovdet RN50-FPN (frozen)``: ``build_clip_resnet_fpn_backbone`` on open_clip RN50 (F-VLM);
- ``ovdet ViT-B/16+SFP (F-ViT, global)``: ``build_clip_vit_sfp_backbone`` on ViT-B-16, blocks
  3/5/7/11, value-only last block, global attention in every block;
- ``ovdet ViT-B/16+SFP (window 14)``: the same with ViTDet-B's window layout (window 14 in
  blocks 0,1,3,4,6,7,9,10), last block only;
- ``d2 R50-FPN``: Detectron2's ``build_resnet_fpn_backbone`` (default R50, FrozenBN);
- ``d2 ViTDet-B``: ``detectron2.modeling.backbone.vit.ViT`` + ``SimpleFeaturePyramid`` with
  ViTDet-B's settings (window 14, global blocks 2/5/8/11, relative positions).

Each (model, size) runs in a fresh subprocess: build, then a warm-up forward, then ``--runs``
timed forwards under ``torch.no_grad``; the time is the median. Peak memory is the growth of the
process's resident set during the forwards: the kernel's high-water mark (``VmHWM``) is reset
after the build (``/proc/self/clear_refs``), and the figure is ``VmHWM - VmRSS(before)``
(torch's CPU allocations are invisible to ``tracemalloc``). Linux only.

Usage: ``python benchmarks/bench_backbones.py [--sizes 512 1024] [--runs 3] [--out FILE.json]``
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODELS = [
    "ovdet RN50-FPN (frozen)",
    "d2 R50-FPN",
    "ovdet ViT-B/16+SFP (F-ViT, global)",
    "ovdet ViT-B/16+SFP (window 14)",
    "d2 ViTDet-B",
]


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _ovdet_cfg(model_name: str):
    from detectron2.config import get_cfg

    import ovdet_plugin

    cfg = get_cfg()
    ovdet_plugin.add_ovdet_config(cfg)
    cfg.MODEL.OVD.CLIP.MODEL_NAME = model_name
    cfg.MODEL.OVD.CLIP.PRETRAINED = ""
    cfg.MODEL.FPN.OUT_CHANNELS = 256
    return cfg


def _build(name: str, size: int):
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool, build_resnet_fpn_backbone
    from detectron2.modeling.backbone.vit import SimpleFeaturePyramid, ViT
    from torch import nn

    if name == "ovdet RN50-FPN (frozen)":
        from ovdet_plugin.modeling.backbone import build_clip_resnet_fpn_backbone

        cfg = _ovdet_cfg("RN50")
        return build_clip_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    if name.startswith("ovdet ViT-B/16"):
        from ovdet_plugin.modeling.backbone import build_clip_vit_sfp_backbone

        cfg = _ovdet_cfg("ViT-B-16")
        bb = cfg.MODEL.OVD.BACKBONE
        if "global" in name:
            bb.VIT_OUT_INDICES = [3, 5, 7, 11]
            bb.VIT_VALUE_ONLY_LAST_BLOCK = True
        else:
            bb.WINDOW_SIZE = 14
            bb.WINDOW_BLOCK_INDEXES = [0, 1, 3, 4, 6, 7, 9, 10]
        return build_clip_vit_sfp_backbone(cfg, ShapeSpec(channels=3))
    if name == "d2 R50-FPN":
        cfg = get_cfg()
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
        return build_resnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    if name == "d2 ViTDet-B":
        # ViTDet-B (detectron2 projects/ViTDet configs: COCO/mask_rcnn_vitdet_b_100ep.py)
        net = ViT(
            img_size=size,
            patch_size=16,
            embed_dim=768,
            depth=12,
            num_heads=12,
            drop_path_rate=0.1,
            window_size=14,
            mlp_ratio=4,
            qkv_bias=True,
            norm_layer=lambda d: nn.LayerNorm(d, eps=1e-6),
            window_block_indexes=[0, 1, 3, 4, 6, 7, 9, 10],
            residual_block_indexes=[],
            use_rel_pos=True,
            out_feature="last_feat",
        )
        return SimpleFeaturePyramid(
            net,
            in_feature="last_feat",
            out_channels=256,
            scale_factors=(4.0, 2.0, 1.0, 0.5),
            top_block=LastLevelMaxPool(),
            norm="LN",
            square_pad=size,
        )
    raise KeyError(name)


def run_one(name: str, size: int, runs: int) -> dict:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(0)
    model = _build(name, size).eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, 3, size, size)
    _reset_peak()
    rss_before = _status_kb("VmRSS")
    times = []
    with torch.no_grad():
        model(x)  # warm-up
        for _ in range(runs):
            t0 = time.perf_counter()
            out = model(x)
            times.append(time.perf_counter() - t0)
    peak = _status_kb("VmHWM") - rss_before
    return {
        "model": name,
        "size": size,
        "params_m": round(params / 1e6, 1),
        "time_s": round(statistics.median(times), 3),
        "min_time_s": round(min(times), 3),
        "times_s": [round(t, 3) for t in times],
        "peak_mem_mib": round(peak / 1024, 1),
        "levels": {k: list(v.shape[-2:]) for k, v in out.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--out", default="")
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one[0], int(args.one[1]), args.runs)))
        return
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    results = []
    for size in args.sizes:
        for name in args.models:
            cmd = [sys.executable, __file__, "--one", name, str(size), "--runs", str(args.runs)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                print(f"{name} @ {size}: FAILED\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            print(
                f"{name:36s} {size:5d}  median {res['time_s']:7.3f} s"
                f"  min {res['min_time_s']:7.3f} s"
                f"  {res['peak_mem_mib']:8.1f} MiB"
                f"  {res['params_m']:6.1f} M params",
                flush=True,
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
