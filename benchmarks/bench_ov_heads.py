#!/usr/bin/env python
"""Inference cost of the open-vocabulary heads: the whole forward at 640x640, CPU, batch 1,
random weights, the same 1000 proposals for every model.

Pairs, each timed alternately in one process on the same image and proposals (median of
--repeats runs after a warm-up), so background load affects both alike:
  - stock Detectron2 R50-FPN (``StandardROIHeads``, 1203-class linear classifier) vs the same
    detector with the ViLD head (projection to 512-d, cosine vs 1203 text embeddings);
  - F-VLM RN50 detector only vs fused (one model: ``roi_heads.fusion_rule`` toggled);
  - F-ViT B/16 detector only vs fused (likewise);
  - "F-VLM before": the design before the one-tower change, reproduced for comparison: 14x14
    box head, the scorer on its own frozen copy running the tower a second time, and open_clip's
    per-region ``AttentionPool2d`` (50 queries projected per region).

"Whole forward" = preprocessing, backbone, the RPN (its proposals replaced by the fixed 1000),
ROI heads and post-processing. Parameter counts are unique parameters. Peak memory growth is
VmHWM minus VmRSS around one forward, in a fresh subprocess per model. Text embeddings are random
unit vectors of the real shapes (1203 x D). Score threshold 0.05, 300 detections.

Usage: python benchmarks/bench_ov_heads.py [--repeats 3] [--threads 1]
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
    "MODEL.OVD.CLIP.PRETRAINED", "",
]  # fmt: skip
R50 = [  # ViLD's R50-FPN detector without SyncBN (one process) and without distillation inputs
    "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.FPN.NORM", "", "MODEL.ROI_BOX_HEAD.NORM", "",
    "MODEL.OVD.VILD.EMBEDDINGS_DIR", "",
]  # fmt: skip
PAIRS = [
    ("stock_r50_fpn", "vild_r50_fpn"),
    ("fvlm_rn50:detector", "fvlm_rn50:fused"),
    ("fvit_b16:detector", "fvit_b16:fused"),
    ("fvlm_rn50_before:detector", "fvlm_rn50_before:fused"),
]


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
    if name == "fvit_b16":
        emb = os.path.join(tmp, "text512.npy")
        return "configs/lvis/fvit_B16_clipself.yaml", [
            "MODEL.OVD.TEXT.EMBEDDINGS_FILE", emb, "MODEL.OVD.CLASSIFIER.BACKGROUND", "learned",
        ]  # fmt: skip
    emb = os.path.join(tmp, "text1024.npy")
    opts = [
        "MODEL.OVD.TEXT.EMBEDDINGS_FILE", emb, "MODEL.OVD.CLASSIFIER.BACKGROUND", "learned",
    ]  # fmt: skip
    if name == "fvlm_rn50_before":
        opts += ["MODEL.OVD.VLM_SCORER.FROZEN_COPY", "True", "MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION",
                 "14", "MODEL.OVD.VLM_SCORER.CROP_CONVENTION", "detectron2"]  # fmt: skip
    return "configs/lvis/fvlm_RN50_FPN.yaml", opts


def build(name: str, tmp: str):
    """The model of ``name`` ("model" or "model:detector" / "model:fused")."""
    import torch
    from detectron2.modeling import build_model

    import ovdet_plugin

    base, _, mode = name.partition(":")
    config_file, opts = model_spec(base, tmp)
    torch.manual_seed(0)
    model = build_model(ovdet_plugin.get_ovdet_cfg(config_file, opts + COMMON)).eval()
    if base == "fvlm_rn50_before":
        scorer = model.roi_heads.vlm_scorer
        # the previous scorer: open_clip's AttentionPool2d on each region (all 50 queries)
        scorer.pool = lambda c5, boxes: torch.nn.functional.normalize(
            scorer.visual.attnpool(scorer._roi_align(c5, boxes)), dim=-1
        )
    if mode == "detector":
        model.roi_heads.fusion_rule = ""
    return model


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


def whole_forward(model, inputs):
    """GeneralizedRCNN.inference with the RPN's proposals replaced by the fixed 1000."""
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    model.proposal_generator(images, features, None)  # run, output replaced
    results, _ = model.roi_heads(images, features, fixed_proposals(images.image_sizes[0]))
    return model._postprocess(results, inputs, images.image_sizes)


def time_pairs(repeats: int, tmp: str) -> dict:
    import torch

    inputs, out = inputs_640(), {}
    for pair in PAIRS:
        models = [build(n, tmp) for n in pair]
        runs = 1 if pair[0].startswith("fvlm_rn50_before") else repeats
        times = {n: [] for n in pair}
        with torch.no_grad():
            for i in range(runs + 1):
                for name, model in zip(pair, models):
                    start = time.perf_counter()
                    whole_forward(model, inputs)
                    if i:
                        times[name].append(time.perf_counter() - start)
        out.update({n: statistics.median(v) for n, v in times.items()})
        del models
    return out


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


def memory_and_params(name: str, tmp: str) -> dict:
    """Unique parameters and the peak memory growth of one forward; run in a fresh process."""
    import torch

    model, inputs = build(name, tmp), inputs_640()
    params = sum(p.numel() for p in model.parameters())
    base = _reset_peak_rss()
    with torch.no_grad():
        whole_forward(model, inputs)
    return {"params_m": params / 1e6, "peak_rss_growth_mib": _status_mib("VmHWM") - base}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--memory", default="", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.memory:
        print(json.dumps(memory_and_params(args.memory, args.tmp)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.RandomState(0)
        for dim in (512, 1024):
            emb = rng.randn(1203, dim).astype(np.float32)
            np.save(os.path.join(tmp, f"text{dim}.npy"), emb / np.linalg.norm(emb, axis=1)[:, None])
        times = time_pairs(args.repeats, tmp)
        rows = []
        for pair in PAIRS:
            for name in pair:
                out = subprocess.run(
                    [sys.executable, __file__, "--memory", name, "--tmp", tmp,
                     "--threads", str(args.threads)],
                    capture_output=True, text=True, check=True,
                ).stdout  # fmt: skip
                rows.append({"model": name, "forward_s": times[name], "ref": times[pair[0]],
                             **json.loads(out.splitlines()[-1])})  # fmt: skip
    print(f"load average at the end: {os.getloadavg()[0]:.1f}; 1000 proposals; {args.threads} "
          f"thread(s); {args.repeats} runs (1 for the 'before' pair)")  # fmt: skip
    print("| model | whole forward | vs the pair's first | parameters | peak memory growth |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['forward_s']:.2f} s | {r['forward_s'] / r['ref']:.3f}x | "
            f"{r['params_m']:.1f} M | {r['peak_rss_growth_mib']:.0f} MiB |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
