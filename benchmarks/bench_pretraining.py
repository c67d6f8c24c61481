"""Step time and peak memory of region-aware VLM training (issue 5) on this machine.

Configurations (random weights, AdamW, one full training step = forward + backward + update):

- RO-ViT pretraining of the tiny ViT CLIP (``ovdet-tiny-vit``: patch 8, width 128, 4 layers,
  3-layer text tower) at **224 px** (28x28 patches), batch ``--batch`` (16): plain CLIP
  (softmax CE, class token), ``+CPE`` (cropped positional embedding, 64x64 upsampled grid),
  ``focal`` (focal contrastive loss), ``focal+CPE``;
- CLIPSelf at **512 px** student input (``ovdet-tiny-vit16``: patch 16, width 64, 3 layers, so a
  32x32 dense map; teacher crops at its 96-px input), batch 2, grid regions (<= 20 per image).

Step time: the four pretraining variants are built in **one process** and stepped round-robin
(after ``--warmup`` rounds, ``--steps`` timed rounds; median per variant), so background load
hits them alike and the overheads of CPE and of the focal loss over plain CLIP training are
measured in one run. The script also times the CPE embedding computation and the focal loss
alone. Peak memory: each configuration runs again in a **fresh subprocess** (build, 3 steps) and
reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's RSS high-water mark,
including Python, torch and the model); these run before the timing run, because Linux carries
``ru_maxrss`` over fork + exec from a large parent.

Usage: ``nice python benchmarks/bench_pretraining.py [--threads 2] [--out FILE.json]``
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

PRETRAIN = {
    "CLIP (softmax, cls)": dict(cpe=False, loss="softmax"),
    "+CPE": dict(cpe=True, loss="softmax"),
    "focal": dict(cpe=False, loss="focal"),
    "focal+CPE": dict(cpe=True, loss="focal"),
}


def build_pretrain(cpe: bool, loss: str, size: int = 224):
    import open_clip

    import ovdet_plugin  # noqa: F401  (registers the tiny model configs)
    from ovdet_plugin.pretraining import CroppedPosEmbed, RegionAwareCLIP

    torch.manual_seed(0)
    clip = open_clip.create_model("ovdet-tiny-vit", force_image_size=size)
    model = RegionAwareCLIP(
        clip_model=clip,
        tokenizer=open_clip.get_tokenizer("ovdet-tiny-vit"),
        cpe=CroppedPosEmbed(64) if cpe else None,
        pooling="cls",
        loss=loss,
    ).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    return model, opt


def pretrain_batch(batch: int, size: int = 224):
    g = torch.Generator().manual_seed(0)
    return {
        "images": torch.randn(batch, 3, size, size, generator=g),
        "captions": [f"a photo of object number {i}" for i in range(batch)],
    }


def build_clipself(size: int = 512):
    import ovdet_plugin  # noqa: F401
    from ovdet_plugin.clip import build_clip_model
    from ovdet_plugin.pretraining.clipself import CLIPSelfModel

    torch.manual_seed(0)
    model = CLIPSelfModel(clip_model=build_clip_model("ovdet-tiny-vit16"), image_size=size).train()
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)


def clipself_batch(size: int = 512):
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(3, size, int(size * 0.75), generator=g)} for _ in range(2)]


def step(model, opt, batch) -> float:
    t = time.perf_counter()
    loss = sum(model(batch).values())
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def one_config(name: str, batch: int) -> dict:
    """Subprocess body: build one configuration, run 3 steps, report the RSS high-water mark."""
    if name == "CLIPSelf 512":
        model, opt = build_clipself()
        data = clipself_batch()
    else:
        model, opt = build_pretrain(**PRETRAIN[name])
        data = pretrain_batch(batch)
    for i in range(3):
        torch.manual_seed(i)
        step(model, opt, data)
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def micro_timings(batch: int, reps: int = 50) -> dict:
    """The CPE embedding (sample boxes, upsample, crop-resize) and the losses alone."""
    import torch.nn.functional as F

    from ovdet_plugin.pretraining import CroppedPosEmbed
    from ovdet_plugin.pretraining.contrastive_losses import (
        focal_contrastive_loss,
        softmax_contrastive_loss,
    )

    pos = torch.randn(1 + 28 * 28, 128, requires_grad=True)
    cpe = CroppedPosEmbed(64)
    img = F.normalize(torch.randn(batch, 64, requires_grad=True), dim=-1)
    txt = F.normalize(torch.randn(batch, 64, requires_grad=True), dim=-1)
    scale = torch.tensor(14.3)

    def timeit(fn):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts) * 1000

    return {
        "cpe_fwd_bwd_ms": timeit(lambda: cpe(pos, (28, 28), (28, 28), batch).sum().backward()),
        "focal_loss_fwd_bwd_ms": timeit(
            lambda: focal_contrastive_loss(img, txt, scale).backward(retain_graph=True)
        ),
        "softmax_loss_fwd_bwd_ms": timeit(
            lambda: softmax_contrastive_loss(img, txt, scale).backward(retain_graph=True)
        ),
    }


def timing_run(batch: int, warmup: int, steps: int) -> dict:
    variants = {n: build_pretrain(**kw) for n, kw in PRETRAIN.items()}
    data = pretrain_batch(batch)
    times = {n: [] for n in variants}
    for r in range(warmup + steps):
        for n, (model, opt) in variants.items():
            torch.manual_seed(r)
            t = step(model, opt, data)
            if r >= warmup:
                times[n].append(t)
    out = {n: statistics.median(ts) for n, ts in times.items()}
    del variants
    model, opt = build_clipself()
    cdata = clipself_batch()
    ts = []
    for r in range(warmup + steps):
        torch.manual_seed(r)
        t = step(model, opt, cdata)
        if r >= warmup:
            ts.append(t)
    out["CLIPSelf 512"] = statistics.median(ts)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(one_config(args.one, args.batch)))
        return
    # memory first: Linux carries ru_maxrss over fork + exec, so the children must be started
    # while this process is still small (torch imported, nothing built)
    mems = {}
    for name in list(PRETRAIN) + ["CLIPSelf 512"]:
        cmd = [sys.executable, __file__, "--one", name, "--batch", str(args.batch)]
        cmd += ["--threads", str(args.threads)]
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        mems[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    times = timing_run(args.batch, args.warmup, args.steps)
    micro = micro_timings(args.batch)
    results = {name: {"step_s": times[name], **mem} for name, mem in mems.items()}
    base = results["CLIP (softmax, cls)"]["step_s"]
    overhead = {
        "CPE": 100 * (results["+CPE"]["step_s"] / base - 1),
        "focal": 100 * (results["focal"]["step_s"] / base - 1),
        "focal+CPE": 100 * (results["focal+CPE"]["step_s"] / base - 1),
    }
    report = {"results": results, "overhead_pct": overhead, "micro": micro, "args": vars(args)}
    print("| configuration | step time (median) | peak RSS |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['step_s'] * 1000:.0f} ms | {r['peak_rss_mib']:.0f} MiB |")
    print()
    for k, v in overhead.items():
        print(f"overhead of {k} over plain CLIP: {v:+.1f}%")
    for k, v in micro.items():
        print(f"{k}: {v:.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
