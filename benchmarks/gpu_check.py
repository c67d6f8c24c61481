"""GPU check of the paper configs: for each config of configs/lvis/ and configs/coco/, at its real
input size with random weights, a few training iterations with AMP on and off, and inference;
step time, images/s and peak memory, written as a Markdown table (and JSON).

    python benchmarks/gpu_check.py --output output/gpu_check            # every paper config
    python benchmarks/gpu_check.py --configs configs/lvis/fvlm_RN50_FPN.yaml --iters 10
    python benchmarks/gpu_check.py --device cpu --tiny --output /tmp/gc   # the script itself, CPU

What it builds: the config as shipped, with random CLIP weights (``MODEL.OVD.CLIP.PRETRAINED
""``, no download), the single-prompt text classifier (the prompt count does not change a step),
SyncBN replaced by BN (one process; per-GPU cost is the same), and ``SOLVER.BASE_LR`` scaled
linearly to the check's batch (``IMS_PER_BATCH`` images -> ``--batch-size``), as the configs'
comments ask: the steps run without the warm-up schedule, and the F-VLM configs' paper rate
(0.36 for 256 images) diverged to NaN within 4 steps at 2 images (first GPU run, 2026-11-30).
Inputs: random images of the training input size (``MODEL.OVD.INPUT.LSJ_SIZE`` square, else
``INPUT.MAX_SIZE_TRAIN`` by ``max(INPUT.MIN_SIZE_TRAIN)``), a few random boxes (and masks when
``MASK_ON``), and for ViLD ``VILD.MAX_PROPOSALS`` random distillation proposals with unit
embeddings. Inference: one image of the test size (``INPUT.MIN_SIZE_TEST``/``MAX_SIZE_TEST``).
A config that fails (e.g. out of memory) gets its error in the table; the others still run.

``--tiny`` replaces the paper configs by the tiny test configs (configs/test/) at 64 px, so the
whole script runs on a CPU in seconds; its figures say nothing about the paper configs.
"""

import argparse
import glob
import json
import math
import os
import platform
import sys
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import ovdet_plugin
from ovdet_plugin.engine import OVDTrainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIGS = ("configs/lvis/*.yaml", "configs/coco/*.yaml")
TINY_CONFIGS = (
    "configs/test/tiny_fvlm.yaml",
    "configs/test/tiny_vild_ensemble.yaml",
    "configs/test/tiny_fvit.yaml",
    "configs/test/tiny_rovit.yaml",
)
TINY_OPTS = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "MODEL.OVD.INPUT.LSJ_SIZE", "0",
]  # fmt: skip
NORM_KEYS = ("MODEL.RESNETS.NORM", "MODEL.FPN.NORM", "MODEL.ROI_BOX_HEAD.NORM",
             "MODEL.ROI_MASK_HEAD.NORM")  # fmt: skip
NO_CUDA = (
    "benchmarks/gpu_check.py measures GPU step time and memory, but this machine has no CUDA "
    "device (torch.cuda.is_available() is False). Run it on a machine with a GPU, or pass "
    "--device cpu --tiny to check the script itself on the CPU."
)


def paper_configs() -> List[str]:
    """configs/lvis/*.yaml and configs/coco/*.yaml, without the Base-* files they inherit."""
    found = []
    for pattern in PAPER_CONFIGS:
        for path in sorted(glob.glob(os.path.join(REPO_ROOT, pattern))):
            if not os.path.basename(path).startswith("Base-"):
                found.append(os.path.relpath(path, REPO_ROOT))
    return found


def build_cfg(path: str, device: str, tiny: bool, extra_opts=(), batch_size: int = 2):
    """The config with random CLIP weights, single prompt, BN for SyncBN, on ``device``, its
    learning rate scaled linearly from ``SOLVER.IMS_PER_BATCH`` images to ``batch_size``."""
    cfg = ovdet_plugin.get_ovdet_cfg(os.path.join(REPO_ROOT, path))
    opts = ["MODEL.DEVICE", device, "MODEL.OVD.CLIP.PRETRAINED", ""]
    opts += ["SOLVER.BASE_LR", cfg.SOLVER.BASE_LR * batch_size / cfg.SOLVER.IMS_PER_BATCH]
    opts += ["SOLVER.IMS_PER_BATCH", batch_size]
    opts += ["MODEL.OVD.BACKBONE.PRETRAINED", "", "MODEL.OVD.TEXT.PROMPTS", "single"]
    for key in NORM_KEYS:
        node = cfg
        for part in key.split(".")[:-1]:
            node = node[part]
        if node[key.split(".")[-1]] == "SyncBN":
            opts += [key, "BN"]
    if tiny:
        opts += TINY_OPTS
    cfg.merge_from_list(opts + list(extra_opts))
    cfg.MODEL.OVD.VILD.EMBEDDINGS_DIR = ""  # the random proposals below stand in for the store
    return cfg


def train_size(cfg) -> tuple:
    """(H, W) of a training image after the config's augmentation."""
    if cfg.MODEL.OVD.INPUT.LSJ_SIZE > 0:
        return cfg.MODEL.OVD.INPUT.LSJ_SIZE, cfg.MODEL.OVD.INPUT.LSJ_SIZE
    short = max(cfg.INPUT.MIN_SIZE_TRAIN)
    return short, max(short, cfg.INPUT.MAX_SIZE_TRAIN)


def make_batch(
    cfg,
    n: int,
    size: tuple,
    device: str,
    *,
    classes: torch.Tensor,
    embed_dim: int,
    seed: int = 0,
) -> List[Dict]:
    """``n`` random training inputs of ``size`` (H, W): 5 boxes each of random classes drawn from
    ``classes`` (the training vocabulary's base classes: novel logits may be -inf in training),
    + box masks with MASK_ON, and, when the heads are ViLD's, ``VILD.MAX_PROPOSALS`` proposals
    with unit ``embed_dim``-d embeddings."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    batch = []
    for _ in range(n):
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float()
        xy = torch.rand(5, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = (0.1 + 0.2 * torch.rand(5, 2, generator=g)) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], 1)
        inst = Instances((h, w))
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = classes[torch.randint(0, len(classes), (5,), generator=g)]
        if cfg.MODEL.MASK_ON:
            masks = torch.zeros(5, h, w, dtype=torch.bool)
            for k, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                masks[k, y0:y1, x0:x1] = True
            inst.gt_masks = BitMasks(masks)
        item = {"image": image.to(device), "instances": inst, "height": h, "width": w}
        if cfg.MODEL.ROI_HEADS.NAME == "ViLDROIHeads":
            m = cfg.MODEL.OVD.VILD.MAX_PROPOSALS
            xy = torch.rand(m, 2, generator=g) * torch.tensor([w * 0.8, h * 0.8])
            prop = Instances((h, w))
            prop.proposal_boxes = Boxes(torch.cat([xy, xy + 0.2 * torch.tensor([w, h])], 1))
            prop.clip_embeds = F.normalize(torch.randn(m, embed_dim, generator=g), dim=1)
            item["vild_proposals"] = prop
        batch.append(item)
    return batch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return float("nan")  # not measured on the CPU


def measure(cfg, amp: bool, batch_size: int, warmup: int, iters: int) -> Dict[str, float]:
    """Train ``warmup + iters`` steps (timing the last ``iters``), then inference on one test-size
    image (``warmup`` untimed passes, then ``iters`` timed). Returns step and inference times,
    images/s and peak memory (GiB, CUDA only)."""
    device = cfg.MODEL.DEVICE
    torch.manual_seed(0)
    model = OVDTrainer.build_model(cfg)
    optimizer = OVDTrainer.build_optimizer(cfg, model)
    predictor = model.roi_heads.box_predictor
    batch = make_batch(
        cfg,
        batch_size,
        train_size(cfg),
        device,
        classes=predictor.text_classifier.train_base_mask.nonzero().flatten().cpu(),
        embed_dim=predictor.text_classifier.embed_dim,
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.startswith("cuda"))
    autocast = dict(device_type=device.split(":")[0], enabled=amp)
    model.train()
    _reset_peak(device)
    times = []
    with EventStorage(0) as storage:  # the heads log to it, as in a Detectron2 trainer
        for step in range(warmup + iters):
            storage.iter = step
            _sync(device)
            start = time.perf_counter()
            with torch.autocast(**autocast):
                losses = model(batch)
                loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: {losses}")
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            _sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    train_peak = _peak_gib(device)
    step_s = sum(times) / len(times)

    model.eval()
    short, long_ = cfg.INPUT.MIN_SIZE_TEST, max(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (3, short, long_), generator=g, dtype=torch.uint8).float()
    inputs = [{"image": image.to(device), "height": short, "width": long_}]
    _reset_peak(device)
    times = []
    with torch.no_grad():
        for step in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            with torch.autocast(**autocast):
                model(inputs)
            _sync(device)
            if step >= warmup:
                times.append(time.perf_counter() - start)
    infer_s = sum(times) / len(times)
    return {
        "train_step_s": step_s,
        "train_images_per_s": batch_size / step_s,
        "train_peak_gib": train_peak,
        "infer_s_per_image": infer_s,
        "infer_images_per_s": 1.0 / infer_s,
        "infer_peak_gib": _peak_gib(device),
    }


COLUMNS = (
    ("config", "config"),
    ("amp", "AMP"),
    ("train_size", "train input"),
    ("train_step_s", "train step (s)"),
    ("train_images_per_s", "train img/s"),
    ("train_peak_gib", "train peak (GiB)"),
    ("test_size", "test input"),
    ("infer_s_per_image", "inference (s/img)"),
    ("infer_images_per_s", "inference img/s"),
    ("infer_peak_gib", "inference peak (GiB)"),
    ("error", "error"),
)


def _cell(value) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value).replace("|", "/").replace("\n", " ") if value not in (None, "") else ""


def format_table(rows: List[Dict]) -> str:
    """A Markdown table of the rows (one per config and AMP setting)."""
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |"]
    lines.append("|" + "---|" * len(COLUMNS))
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key)) for key, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}, {gpu}, torch {torch.__version__}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--configs", nargs="*", default=None, help="default: every paper config")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny test configs at 64 px (CPU check)")
    p.add_argument("--batch-size", type=int, default=2, help="training images per step")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    p.add_argument("--iters", type=int, default=5, help="timed training steps / inferences")
    p.add_argument("--amp", choices=["both", "on", "off"], default="both")
    p.add_argument("--output", default="output/gpu_check", help="folder for table.md + .json")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(NO_CUDA)
    configs = args.configs or (list(TINY_CONFIGS) if args.tiny else paper_configs())
    amps = {"both": [False, True], "on": [True], "off": [False]}[args.amp]
    os.makedirs(args.output, exist_ok=True)
    rows = []
    for path in configs:
        for amp in amps:
            row: Dict[str, object] = {"config": path, "amp": amp}
            try:
                cfg = build_cfg(path, args.device, args.tiny, args.opts, args.batch_size)
                h, w = train_size(cfg)
                row["train_size"] = f"{args.batch_size}x{h}x{w}"
                test_long = max(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
                row["test_size"] = f"{cfg.INPUT.MIN_SIZE_TEST}x{test_long}"
                row.update(measure(cfg, amp, args.batch_size, args.warmup, args.iters))
            except Exception as e:  # out of memory, a broken config: report it, go on
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            finally:
                if args.device.startswith("cuda"):
                    torch.cuda.empty_cache()
            rows.append(row)
            print(format_table([row]).splitlines()[-1], flush=True)
    header = (
        f"GPU check, {time.strftime('%Y-%m-%d %H:%M')}, {machine()}; random weights, batch "
        f"{args.batch_size}, {args.warmup} warm-up + {args.iters} timed steps"
        + (" (tiny test configs: not the paper configs)" if args.tiny else "")
        + "\n\n"
    )
    table = header + format_table(rows)
    with open(os.path.join(args.output, "table.md"), "w", encoding="utf-8") as f:
        f.write(table)
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"machine": machine(), "args": vars(args), "rows": rows}, f, indent=1)
    print(table)
    return rows


if __name__ == "__main__":
    failed = [r for r in main(sys.argv[1:]) if r.get("error")]
    sys.exit(1 if failed else 0)  # the table is written either way
