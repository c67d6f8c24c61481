#!/usr/bin/env python
"""Time to build the LVIS text classifier (1203 classes) with a tiny CLIP, and to load it back
from the on-disk cache.

- build: prompt ensemble encoded by the text tower, then written to the cache (empty cache).
- load, warm: the same model object asks again (its text-weights checksum is memoised).
- load, cold: a fresh model object with the same weights asks (includes computing the
  SHA-256 checksum of its text tower, which the cache key needs).

Usage: python benchmarks/bench_text_embeddings.py [--prompts vild] [--repeats 20]
Prints a markdown table for benchmarks/RESULTS.md.
"""

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time

import torch

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip.text_embeddings import get_text_embeddings


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="ovdet-tiny-vit")
    p.add_argument("--prompts", default="vild", choices=["vild", "clip", "single"])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.manual_seed(0)
    model = build_clip_model(args.model)
    tokenizer = get_clip_tokenizer(args.model)
    with tempfile.TemporaryDirectory() as cache:
        run = lambda m: get_text_embeddings(  # noqa: E731
            m, tokenizer, "lvis", prompts=args.prompts, cache_dir=cache, show_progress=False
        )
        start = time.perf_counter()
        emb = run(model)
        build_s = time.perf_counter() - start
        size_kb = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache)) / 1024

        warm = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            run(model)
            warm.append(time.perf_counter() - start)

        cold = []
        for _ in range(max(3, args.repeats // 4)):
            fresh = build_clip_model(args.model)
            fresh.load_state_dict(model.state_dict())
            start = time.perf_counter()
            again = run(fresh)
            cold.append(time.perf_counter() - start)
            assert torch.equal(again, emb)

    prompts = {"vild": 63, "clip": 80, "single": 1}[args.prompts]
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"vocabulary: LVIS v1, {emb.shape[0]} classes x {prompts} prompts -> {tuple(emb.shape)}")
    print("| model | prompts | build (encode + write) | load, warm (median) | load, cold (median) "
          "| cache file |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.model} | {args.prompts} ({prompts}) | {build_s:.1f} s | "
        f"{statistics.median(warm) * 1000:.1f} ms | {statistics.median(cold) * 1000:.1f} ms | "
        f"{size_kb:.0f} KiB |"
    )


if __name__ == "__main__":
    main()
