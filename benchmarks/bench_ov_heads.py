#!/usr/bin/env python
"""Inference cost of the open-vocabulary heads at 640x640, CPU, batch 1, random weights.

Pair 1, same R50-FPN backbone features and the same 1000 (fixed, random) proposals:
  - stock: Detectron2's StandardROIHeads, linear classifier over 1203 + 1 classes;
  - ViLD head: OVROIHeads, projection to 512-d, cosine vs 1203 frozen text embeddings.
Pair 2, same frozen CLIP RN50 + FPN features and the same 1000 proposals:
  - F-VLM detector only (OVROIHeads, 1024-d text embeddings, no fusion);
  - F-VLM fused: + VLM scoring (attention pool on the frozen tower) + fusion.

The two heads of a pair are timed alternately on identical inputs in one process (median of
--repeats runs after a warm-up), so background load affects both alike. The whole-model forward
of each model and its peak memory growth during the forwards (VmHWM after resetting it, in a
fresh subprocess per model) are reported as well. Text
embeddings are random unit vectors of the real shapes (1203 x D). Score threshold 0.05, 300
detections. Usage: python benchmarks/bench_ov_heads.py [--repeats 5]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

COMMON = [
    "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "640", "INPUT.MAX_SIZE_TEST", "640",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "1000", "TEST.DETECTIONS_PER_IMAGE", "300",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.05", "MODEL.MASK_ON", "False",
]  # fmt: skip
R50 = [  # ViLD's R50-FPN detector without SyncBN (one process) and without distillation inputs
    "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FPN.NORM", "", "MODEL.ROI_BOX_HEAD.NORM", "",
    "MODEL.OVD.VILD.EMBEDDINGS_DIR", "",
]  # fmt: skip


def model_spec(name: str, tmp: str):
    """(config file, overrides) of each benchmarked model."""
    if name == "stock_r50_fpn":  # the same detector with Detectron2's linear classifier
        return "configs/lvis/vild_R50_FPN.yaml", R50 + [
            "MODEL.META_ARCHITECTURE", "GeneralizedRCNN",
            "MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_HEADS.NUM_CLASSES", "1203",
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "False",
        ]  # fmt: skip
    if name == "vild_r50_fpn":
        emb = os.path.join(tmp, "text512.npy")
        return "configs/lvis/vild_R50_FPN.yaml", R50 + [
            "MODEL.ROI_HEADS.NAME", "OVROIHeads", "MODEL.OVD.TEXT.EMBEDDINGS_FILE", emb,
        ]  # fmt: skip
    emb = os.path.join(tmp, "text1024.npy")
    fusion = "fvlm" if name == "fvlm_rn50_fused" else ""
    return "configs/lvis/fvlm_RN50_FPN.yaml", [
        "MODEL.OVD.TEXT.EMBEDDINGS_FILE", emb, "MODEL.OVD.CLIP.PRETRAINED", "",
        "MODEL.OVD.CLASSIFIER.BACKGROUND", "learned", "MODEL.OVD.FUSION.RULE", fusion,
    ]  # fmt: skip


def build(name: str, tmp: str):
    import torch
    from detectron2.modeling import build_model

    import ovdet_plugin

    config_file, opts = model_spec(name, tmp)
    torch.manual_seed(0)
    return build_model(ovdet_plugin.get_ovdet_cfg(config_file, opts + COMMON)).eval()


def inputs_640():
    import torch

    torch.manual_seed(1)
    image = torch.randint(0, 255, (3, 640, 640), dtype=torch.uint8).float()
    return [{"image": image, "height": 640, "width": 640}]


def fixed_proposals(image_size, num: int = 1000):
    """``num`` seeded random boxes (the test-time RPN's 1000 proposals): a random-weight RPN
    keeps an arbitrary number after NMS, which would make the head timings incomparable."""
    import torch
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(2)
    h, w = image_size
    xy = torch.rand(num, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
    wh = 8 + torch.rand(num, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
    boxes = torch.cat([xy, (xy + wh).min(torch.tensor([w, h]).float())], dim=1)
    return [Instances(image_size, proposal_boxes=Boxes(boxes), objectness_logits=torch.zeros(num))]


def time_pair(names, repeats: int, tmp: str) -> dict:
    """Median ROI-head time of two models on the first one's backbone features/proposals."""
    import torch

    models = [build(n, tmp) for n in names]
    inputs = inputs_640()
    out = {n: [] for n in names}
    with torch.no_grad():
        images = models[0].preprocess_image(inputs)
        features = models[0].backbone(images.tensor)
        proposals = fixed_proposals(images.image_sizes[0])
        for i in range(repeats + 1):
            for name, model in zip(names, models):
                start = time.perf_counter()
                model.roi_heads(images, features, proposals)
                if i:
                    out[name].append(time.perf_counter() - start)
    return {n: statistics.median(v) for n, v in out.items()} | {"proposals": len(proposals[0])}


def _reset_peak_rss() -> float:
    """Reset the kernel's RSS high-water mark (Linux) and return the current RSS in MiB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mib("VmRSS")


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def time_forward(name: str, repeats: int, tmp: str) -> dict:
    """Whole forward (median) and peak memory growth during the forwards (activations and
    workspace, not weights) of one model; run in a fresh process."""
    import torch

    model, inputs, times = build(name, tmp), inputs_640(), []
    base = _reset_peak_rss()
    with torch.no_grad():
        for i in range(repeats + 1):
            start = time.perf_counter()
            model(inputs)
            if i:
                times.append(time.perf_counter() - start)
    peak = _status_mib("VmHWM") - base
    return {"forward_s": statistics.median(times), "peak_rss_growth_mib": peak}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--forward", default="", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.forward:
        print(json.dumps(time_forward(args.forward, args.repeats, args.tmp)))
        return
    names = ["stock_r50_fpn", "vild_r50_fpn", "fvlm_rn50_detector_only", "fvlm_rn50_fused"]
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.RandomState(0)
        for dim in (512, 1024):
            emb = rng.randn(1203, dim).astype(np.float32)
            np.save(os.path.join(tmp, f"text{dim}.npy"), emb / np.linalg.norm(emb, axis=1)[:, None])
        heads = time_pair(names[:2], args.repeats, tmp)
        heads.update(time_pair(names[2:], max(1, args.repeats // 2), tmp))
        rows = []
        for name in names:
            out = subprocess.run(
                [sys.executable, __file__, "--forward", name, "--repeats", str(args.repeats),
                 "--tmp", tmp, "--threads", str(args.threads)],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            rows.append(
                {"model": name, "roi_heads_s": heads[name], **json.loads(out.splitlines()[-1])}
            )
    print(
        f"load average at the end: {os.getloadavg()[0]:.1f}; {heads['proposals']} proposals; "
        f"{args.threads} thread(s)"
    )
    print("| model | ROI heads | vs its pair's first | whole forward | peak memory growth |")
    print("|---|---|---|---|---|")
    for i, r in enumerate(rows):
        ref = rows[i - i % 2]["roi_heads_s"]
        print(
            f"| {r['model']} | {r['roi_heads_s'] * 1000:.0f} ms | "
            f"{(r['roi_heads_s'] / ref - 1) * 100:+.1f}% | {r['forward_s']:.2f} s | "
            f"{r['peak_rss_growth_mib']:.0f} MiB |"
        )


if __name__ == "__main__":
    main()
