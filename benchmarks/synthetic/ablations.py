"""Ablations of the generated-data benchmark (``make benchmark-synthetic``): the directions each
paper claims, measured on the generated data, as one table.

- headline rows (the four methods, the oracle, and ViLD-text and F-ViT without CLIPSelf, the
  other side of two claims) over 3 seeds: the seed sets the generated data, CLIPSelf and the
  detectors' training; the tiny CLIPs are the main run's for all three. Mean and spread
  (population standard deviation), and the papers' claims checked on them (``paper_claims``:
  a difference holds when it exceeds the two standard deviations combined);
- F-VLM, F-ViT, RO-ViT detector-only vs fused (every run of a fused method is evaluated both ways);
- ViLD-text vs ViLD-image vs ViLD (text + image, one branch) vs ViLD-ensemble;
- F-ViT without vs with CLIPSelf;
- RO-ViT pretraining: without vs with the cropped positional embedding (3 seeds: RO-ViT's claim,
  checked on the region zero-shot accuracy of its avgpool scorer on the tower's map of the whole
  image, the paper's region feature), multi-positive softmax vs
  focal loss (seed 0); each tiny CLIP pretrained by tools/pretrain_rovit.py with
  configs/pretraining/tiny_synthetic.yaml and the variant's overrides for ``pretrain_steps``,
  then the RO-ViT detector on it;
- RO-ViT with a frozen vs fine-tuned backbone.

Every row is a run of ``tools/run_synthetic_benchmark.py`` in its own folder under
``<out>/ablations/`` (so each is reused when done); up to ``jobs`` run at once, one torch thread
each. The table goes to ``<out>/ablations.md`` and ``<out>/ablations.json``.
"""

import json
import math
import os
import subprocess
import sys
import time
from typing import Callable, Dict, List, Sequence

from ovdet_plugin.utils.atomic_io import atomic_write_path

from .pipeline import (
    ALL_METHODS,
    METHODS,
    PRETRAIN_VARIANTS,
    REPO_ROOT,
    BenchmarkSize,
    format_method_row,
    method_table_header,
)

__all__ = ["run_ablations", "ablation_jobs", "format_ablations_markdown"]

# The table's names of the PRETRAIN_VARIANTS.
PRETRAIN_VARIANT_NAMES = {
    "multipos": "multi-positive softmax",
    "cpe_multipos": "CPE + multi-positive softmax",
    "cpe_focal": "CPE + focal",
}


# The pretraining variants of RO-ViT's claim (CPE > none on region zero-shot accuracy), run with
# every seed (the third, focal, with seed 0 only).
CPE_CLAIM_VARIANTS = ("multipos", "cpe_multipos")

# The ablation methods that are one side of a paper's claim, run with every seed (seed 0's in
# the "methods" job): ViLD-text (vs the ensemble) and F-ViT without CLIPSelf (vs with).
SEED_ABLATIONS = ("vild_text", "fvit_no_clipself")


def ablation_jobs(
    clip_path: str,
    seeds: Sequence[int],
    pretrain_steps: int,
    size_name: str,
    clip_rn_path: str = "",
) -> Dict[str, List[str]]:
    """name -> arguments of ``tools/run_synthetic_benchmark.py`` (without --output). The seed and
    method jobs use the main run's tiny CLIPs (``clip_path``: the ViT, ``clip_rn_path``: the
    ResNet; "" = the shipped one)."""
    common = ["--size", size_name, "--threads", "1"]
    clips = ["--clip-checkpoint", clip_path]
    if clip_rn_path:
        clips += ["--clip-rn-checkpoint", clip_rn_path]
    jobs = {}
    for seed in seeds:
        if seed != 0:  # seed 0 is the main run
            jobs[f"seed{seed}"] = common + [
                "--seed", str(seed), *clips,
                "--methods", ",".join([*METHODS, *SEED_ABLATIONS]),
            ]  # fmt: skip
    jobs["methods"] = common + [
        *clips,
        "--methods", "vild_text,vild_image,vild_text_image,fvit_no_clipself,rovit_frozen",
    ]  # fmt: skip
    for variant in PRETRAIN_VARIANTS:
        for seed in seeds if variant in CPE_CLAIM_VARIANTS else [0]:
            jobs[pretrain_job_name(variant, seed)] = common + [
                *(["--seed", str(seed)] if seed else []),
                "--from-scratch", "--pretrain-variant", variant,
                "--pretrain-steps", str(pretrain_steps), "--methods", "rovit",
            ]  # fmt: skip
    return jobs


def pretrain_job_name(variant: str, seed: int) -> str:
    """The ablation folder of a pretraining variant's run with ``seed`` (the caption folder, the
    pretraining and the RO-ViT detector all follow the seed)."""
    return f"pretrain_{variant}" + (f"_seed{seed}" if seed else "")


def run_ablations(
    out_dir: str,
    size: BenchmarkSize,
    clip_path: str,
    *,
    clip_rn_path: str = "",
    size_name: str = "default",
    seeds: Sequence[int] = (0, 1, 2),
    pretrain_steps: int = 3000,
    jobs: int = 2,
    log: Callable[[str], None] = print,
) -> Dict:
    """Run the ablation jobs (see the module docstring) and write the table; returns it."""
    pretrain_steps = min(pretrain_steps, size.pretrain_steps)  # never longer than the main run
    root = os.path.join(os.path.abspath(out_dir), "ablations")
    os.makedirs(root, exist_ok=True)
    todo = ablation_jobs(clip_path, seeds, pretrain_steps, size_name, clip_rn_path)
    tool = os.path.join(REPO_ROOT, "tools", "run_synthetic_benchmark.py")
    running: Dict[str, tuple] = {}  # name -> (process, its open log file)
    pending = list(todo)
    failed = []
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            folder = os.path.join(root, name)
            os.makedirs(folder, exist_ok=True)
            log_file = open(os.path.join(folder, "run.log"), "w", encoding="utf-8")
            cmd = [sys.executable, tool, "--output", folder, *todo[name]]
            log(f"ablation {name}: started ({' '.join(todo[name])}; log {folder}/run.log)")
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
            running[name] = (proc, log_file)
        time.sleep(2)
        for name, (proc, log_file) in list(running.items()):
            if proc.poll() is not None:
                log_file.close()
                del running[name]
                took = time.perf_counter() - start
                if proc.returncode:
                    failed.append(name)
                    log(f"ablation {name}: FAILED (exit {proc.returncode}), see its run.log")
                else:
                    log(f"ablation {name}: done ({took:.0f} s since the ablations started)")
    table = collect_ablations(out_dir, seeds)
    table["failed"] = failed
    table["seconds"] = time.perf_counter() - start
    with atomic_write_path(os.path.join(out_dir, "ablations.json")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)
    with atomic_write_path(os.path.join(out_dir, "ablations.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(format_ablations_markdown(table))
    log(f"ablations: {os.path.join(out_dir, 'ablations.md')}")
    if failed:
        raise RuntimeError(f"Ablation jobs failed: {failed}; see their run.log files in {root}")
    return table


def _load(path: str):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _mean_std(values: List[float]) -> Dict[str, float]:
    m = sum(values) / len(values)
    return {"mean": m, "std": math.sqrt(sum((v - m) ** 2 for v in values) / len(values))}


def collect_ablations(out_dir: str, seeds: Sequence[int]) -> Dict:
    """The table from the runs' results.json files (missing runs are left out)."""
    root = os.path.join(out_dir, "ablations")
    main = _load(os.path.join(out_dir, "results.json"))
    extra = _load(os.path.join(root, "methods", "results.json"))
    runs = {0: main}
    if main and extra:  # seed 0's SEED_ABLATIONS come from the "methods" job
        runs[0] = dict(main, methods={**extra["methods"], **main["methods"]})
    for seed in seeds:
        if seed != 0:
            runs[seed] = _load(os.path.join(root, f"seed{seed}", "results.json"))
    headline = {}
    for key in [*METHODS, *SEED_ABLATIONS]:
        method = ALL_METHODS[key]
        per_seed = {s: r["methods"][key] for s, r in runs.items() if r and key in r["methods"]}
        if not per_seed:
            continue
        row = {"title": method.title, "seeds": sorted(per_seed)}
        for metric in ("AP", "APr", "APc", "APf"):
            row[metric] = _mean_std([rec["fused"][metric] for rec in per_seed.values()])
        masks = [rec["mask"] for rec in per_seed.values() if rec.get("mask")]
        if len(masks) == len(per_seed):  # every seed ran with the mask head
            for metric in ("AP", "APr"):
                row[f"mask_{metric}"] = _mean_std([m[metric] for m in masks])
        if method.fused:
            for metric in ("APr", "APf"):
                row[f"{metric}_detector_only"] = _mean_std(
                    [rec["detector_only"][metric] for rec in per_seed.values()]
                )
        regions = [rec.get("region_zero_shot") for rec in per_seed.values()]
        if regions and all(regions):  # the fused score's region zero-shot, every seed
            row["region_scorer"] = regions[0]["scorer"]
            for group in ("r", "all"):
                row[f"region_{group}"] = _mean_std([z[group] for z in regions])
        headline[key] = row
    single = {}
    for source in (main, extra):
        for key, rec in ((source or {}).get("methods") or {}).items():
            single[key] = rec
    pretrain = {}
    for variant in PRETRAIN_VARIANTS:
        per_seed = {}
        for seed in seeds:
            r = _load(os.path.join(root, pretrain_job_name(variant, seed), "results.json"))
            if r:
                rovit = r["methods"]["rovit"]
                per_seed[seed] = {
                    "zero_shot": r["clip"]["zero_shot"],
                    # CPE's claim is on the paper's region feature (the map of the whole image),
                    # whatever crop the benchmark's RO-ViT fuses
                    "region_zero_shot": rovit.get("region_zero_shot_map")
                    or rovit.get("region_zero_shot"),
                    "rovit": rovit,
                }
        if per_seed:
            pretrain[variant] = {"seeds": sorted(per_seed), "runs": per_seed,
                                 **_pretrain_means(per_seed.values())}  # fmt: skip
    return {
        "headline": headline,
        "claims": paper_claims(headline) + pretrain_claims(pretrain),
        "single_seed": single,
        "pretraining": pretrain,
    }


def _pretrain_means(runs) -> Dict[str, Dict[str, float]]:
    """Mean and spread over a pretraining variant's seeds: crop and region zero-shot (rare,
    all) and the RO-ViT detector's box AP."""
    runs = list(runs)
    out = {}
    for group in ("r", "all"):
        out[f"crop_{group}"] = _mean_std([r["zero_shot"][group] for r in runs])
        regions = [r["region_zero_shot"] for r in runs if r["region_zero_shot"]]
        if len(regions) == len(runs):
            out[f"region_{group}"] = _mean_std([z[group] for z in regions])
    for metric in ("AP", "APr", "APc", "APf"):
        out[metric] = _mean_std([r["rovit"]["fused"][metric] for r in runs])
    return out


def pretrain_claims(pretrain: Dict) -> List[Dict]:
    """RO-ViT's claim that the cropped positional embedding helps region-level recognition: region
    zero-shot accuracy (RO-ViT's avgpool scorer on the val boxes inside whole images), rare and
    all, with CPE > without, over the seeds both variants ran."""
    a, b = pretrain.get("cpe_multipos"), pretrain.get("multipos")
    if not a or not b:
        return []
    return [
        _larger({"cpe": a, "none": b}, ("cpe", key), ("none", key),
                f"RO-ViT pretraining: region zero-shot {label} with CPE > without")
        for key, label in (("region_r", "rare"), ("region_all", "all"))
        if key in a and key in b
    ]  # fmt: skip


def _larger(headline: Dict, a: tuple, b: tuple, claim: str) -> Dict:
    """Claim "a > b": the difference of the means and whether it exceeds the two stds combined
    (``a`` / ``b``: (row, metric) of the headline table)."""
    x, y = headline[a[0]][a[1]], headline[b[0]][b[1]]
    diff = x["mean"] - y["mean"]
    return {"claim": claim, "a": x, "b": y, "diff": diff, "holds": diff > x["std"] + y["std"]}


def paper_claims(headline: Dict) -> List[Dict]:
    """The papers' directions that the headline rows can check over the seeds: fused APr >
    detector-only APr (F-VLM, F-ViT, RO-ViT), ViLD ensemble > ViLD-text and F-ViT with >
    without CLIPSelf on APr, CLIPSelf's dense region zero-shot (rare) with > without, each
    holding when the difference of the means is larger than the two standard deviations
    combined; and the best open-vocabulary method's APr >= 0.6 APf."""
    claims = []
    for key in ("fvlm", "fvit", "rovit"):
        if key in headline and "APr_detector_only" in headline[key]:
            claims.append(
                _larger(headline, (key, "APr"), (key, "APr_detector_only"),
                        f"{METHODS[key].title}: fused APr > detector-only APr")
            )  # fmt: skip
    for a, b, metric, claim in (
        ("vild", "vild_text", "APr", "ViLD: ensemble APr > ViLD-text APr"),
        ("fvit", "fvit_no_clipself", "APr", "F-ViT: APr with CLIPSelf > without"),
        # CLIPSelf's own claim (its Table 1): dense features that classify regions
        ("fvit", "fvit_no_clipself", "region_r",
         "CLIPSelf: dense region zero-shot rare with > without"),
    ):  # fmt: skip
        if metric in headline.get(a, {}) and metric in headline.get(b, {}):
            claims.append(_larger(headline, (a, metric), (b, metric), claim))
    open_vocab = [k for k in METHODS if k in headline and not METHODS[k].oracle]
    if open_vocab:
        best = max(open_vocab, key=lambda k: headline[k]["APr"]["mean"])
        ratio = headline[best]["APr"]["mean"] / max(headline[best]["APf"]["mean"], 1e-9)
        claims.append({
            "claim": f"best APr ({METHODS[best].title}) >= 0.6 x its APf",
            "ratio": ratio, "holds": ratio >= 0.6,
        })  # fmt: skip
    return claims


def _fmt(ms: Dict[str, float]) -> str:
    return f"{ms['mean']:.1f} ± {ms['std']:.1f}"


def format_ablations_markdown(table: Dict) -> str:
    lines = ["# Ablations on the generated data", ""]
    h = table["headline"]
    if h:
        n = max(len(r["seeds"]) for r in h.values())
        lines += [
            f"Headline rows: mean ± standard deviation over {n} seeds (box AP %, LVISEvaluator; "
            "mask AP of the same detections where the mask head ran).",
            "",
            "| method | AP | APr | APc | APf | detector only: APr / APf | mask AP | mask APr |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in h.values():
            only = "-"
            if "APr_detector_only" in r:
                only = f"{_fmt(r['APr_detector_only'])} / {_fmt(r['APf_detector_only'])}"
            masks = f"{_fmt(r['mask_AP'])} | {_fmt(r['mask_APr'])}" if "mask_AP" in r else "- | -"
            lines.append(
                f"| {r['title']} | {_fmt(r['AP'])} | {_fmt(r['APr'])} | {_fmt(r['APc'])} | "
                f"{_fmt(r['APf'])} | {only} | {masks} |"
            )
        regions = [
            f"{r['title']} ({r['region_scorer']}) rare {_fmt(r['region_r'])}, "
            f"all {_fmt(r['region_all'])}"
            for r in h.values()
            if "region_r" in r
        ]
        if regions:
            lines += ["", "Region zero-shot accuracy (%) of the score each fused method fuses "
                      "(the val boxes scored inside their whole images): " + "; ".join(regions)
                      + "."]  # fmt: skip
        lines.append("")
    claims = table.get("claims") or []
    if claims:
        lines += ["The papers' claims over the seeds (holds: the difference of the means is "
                  "larger than the two standard deviations combined):", ""]  # fmt: skip
        for c in claims:
            verdict = "**holds**" if c["holds"] else "not shown"
            if "ratio" in c:
                lines.append(f"- {c['claim']}: {c['ratio']:.2f}, {verdict}")
            else:
                lines.append(
                    f"- {c['claim']}: {_fmt(c['a'])} vs {_fmt(c['b'])} "
                    f"(difference {c['diff']:+.1f}), {verdict}"
                )
        lines.append("")
    s = table["single_seed"]
    if s:
        lines += [
            "Single seed (0): method variants.",
            "",
            *method_table_header("run"),
        ]
        lines += [format_method_row(rec) for rec in s.values()]
        lines.append("")
    p = table["pretraining"]
    if p:
        lines += [
            "RO-ViT pretraining variants (shorter pretraining than the main run), then the RO-ViT "
            "detector on each; mean ± standard deviation over the seeds each ran. Crop: val "
            "objects as isolated crops; region: the val boxes inside whole images, scored by "
            "RO-ViT's avgpool scorer.",
            "",
            "| pretraining | seeds | crop rare / all | region rare / all | AP | APr | APc | APf |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for variant, rec in p.items():
            name = PRETRAIN_VARIANT_NAMES.get(variant, variant)
            region = "-"
            if "region_r" in rec:
                region = f"{_fmt(rec['region_r'])} / {_fmt(rec['region_all'])}"
            lines.append(
                f"| {name} | {', '.join(map(str, rec['seeds']))} | {_fmt(rec['crop_r'])} / "
                f"{_fmt(rec['crop_all'])} | {region} | {_fmt(rec['AP'])} | {_fmt(rec['APr'])} | "
                f"{_fmt(rec['APc'])} | {_fmt(rec['APf'])} |"
            )
        lines.append("")
    if table.get("failed"):
        lines += [f"Failed jobs: {', '.join(table['failed'])}.", ""]
    return "\n".join(lines)
