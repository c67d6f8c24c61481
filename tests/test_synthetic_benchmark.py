"""The generated-data benchmark (tools/run_synthetic_benchmark.py): a smoke run of every step at
the smallest size, step reuse, the shipped tiny CLIP, and the ablation table."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO_ROOT

from benchmarks.synthetic.ablations import collect_ablations, format_ablations_markdown
from benchmarks.synthetic.pipeline import (
    ALL_METHODS,
    METHODS,
    SHIPPED_CLIP,
    SHIPPED_CLIP_RN,
    SIZES,
    TINY_CLIPS,
    SyntheticBenchmark,
    load_step,
)

TOOL = os.path.join(REPO_ROOT, "tools", "run_synthetic_benchmark.py")
VAL = "ovdet_synthetic_val"
STEPS = [
    "data", "clip", "clip_rn", "clipself", "fvlm", "vild_embeddings", "vild", "fvit", "rovit",
    "fvlm_oracle", "pictures",
]  # fmt: skip


def run_tool(out, *args):
    cmd = [sys.executable, TOOL, "--size", "smoke", "--output", str(out), "--threads", "1", *args]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, run_tool(out, "--from-scratch")  # run_tool's 600-s timeout bounds it


def test_smoke_run_produces_every_step_and_the_lvis_evaluation(smoke_run):
    out, result = smoke_run
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    for step in STEPS:
        assert load_step(out / step) is not None, f"step {step} left no step.json"
        assert f"{step}: done in" in log
    assert os.path.isfile(out / "clip" / "tiny_clip.pt")
    assert os.path.isfile(out / "clip_rn" / "tiny_clip.pt")
    assert os.path.isfile(out / "clipself" / "clipself_final.pt")
    md = (out / "results.md").read_text()
    with open(out / "results.json") as f:
        report = json.load(f)
    assert set(report["methods"]) == set(METHODS)
    for key, rec in report["methods"].items():
        # The stock LVISEvaluator ran on the val split: its files and APr/APc/APf are there.
        assert os.path.isfile(out / key / "inference" / VAL / "lvis_instances_results.json")
        assert {"AP", "APr", "APc", "APf"} <= set(rec["fused"])
        # box and mask AP: the class-agnostic mask head runs in every method
        assert {"AP", "APr", "APc", "APf"} <= set(rec["mask"])
        assert ("detector_only" in rec) == METHODS[key].fused
        if METHODS[key].fused:  # the detector-only evaluation scores boxes only
            with open(out / key / "detector_only" / "eval_results.json") as f:
                assert set(json.load(f)) == {"bbox"}
        # the region zero-shot figure of the score each fused method fuses, by its own scorer
        region = rec.get("region_zero_shot")
        assert (region is not None) == METHODS[key].fused
        if region:
            scorer = {"fvlm": "attnpool", "fvit": "dense", "rovit": "avgpool"}[key]
            assert region["scorer"] == scorer
            # F-VLM (C4 crop), RO-ViT (crops of the pixels) and F-ViT (64-px windows) depart from
            # their papers' region feature: the paper's, on the map of the whole image, is
            # measured beside it
            on_map = rec.get("region_zero_shot_map")
            assert (on_map is not None) == (key in ("fvlm", "rovit", "fvit"))
            if on_map:
                assert on_map["scorer"] == scorer and on_map["n_all"] == region["n_all"]
                assert "on the whole image's map, the paper's region feature: rare" in md
            assert region["n_all"] == region["n_r"] + region["n_c"] + region["n_f"] > 0
            assert 0.0 <= region["all"] <= 100.0
            # the scorer's most frequent answer, said beside the figure in results.md
            assert 100.0 / 32 <= region["top_share"] <= 100.0
            assert f"its most frequent answer, {region['top_name']}, for" in md
        # label precision of the drawn detections, over every val image
        for lp in [rec["label_precision"]] + (
            [rec["label_precision_detector_only"]] if METHODS[key].fused else []
        ):
            assert lp["images"] == 4 and (lp["score_threshold"], lp["top_k"]) == (0.8, 6)
            assert 0 <= lp["correct"] <= lp["n"] <= 6 * 4 and lp["n_rare"] <= lp["n"]
            assert lp["precision"] is None or 0.0 <= lp["precision"] <= 100.0
    # the oracle: F-VLM's detector on every class's boxes, evaluated detector only
    oracle = report["methods"]["fvlm_oracle"]
    assert oracle["oracle"] and oracle["title"] == "F-VLM oracle (all classes' boxes)"
    with open(out / "fvlm_oracle" / "config.yaml") as f:
        text = f.read()
    assert "ovdet_synthetic_train_all" in text and "NOVEL_MASK: none" in text
    assert "RULE: ''" in text
    zero_shot = report["clip"]["zero_shot"]
    assert zero_shot["n_all"] == zero_shot["n_r"] + zero_shot["n_c"] + zero_shot["n_f"] > 0
    # --from-scratch: the product's tools made the tiny CLIP (caption folder, pretrain_rovit)
    clip = report["clip"]
    assert "tools/pretrain_rovit.py" in clip["command"]
    assert "configs/pretraining/tiny_synthetic.yaml" in clip["command"]
    assert "tools/generate_synthetic_data.py" in clip["caption_command"]
    assert "--pretrain-style scene_crops" in clip["caption_command"]
    assert clip["caption_data"]["seed"] == 1 and clip["caption_data"]["num_pretrain"] == 64
    assert clip["caption_counts"]["pretrain_images"] == 64
    assert clip["seed"] == 0 and clip["variant"] == "multipos"
    # the ResNet (F-VLM, its oracle, ViLD) from its own config, on the same captions
    rn = report["clip_rn"]
    assert rn["model_name"] == "ovdet-tiny-rn64" and rn["variant"] == ""
    assert "configs/pretraining/tiny_synthetic_rn.yaml" in rn["command"]
    assert rn["caption_command"] == clip["caption_command"]
    assert rn["zero_shot"]["n_all"] == zero_shot["n_all"]
    with open(out / "fvlm" / "config.yaml") as f:
        fvlm_cfg = f.read()
    assert "ovdet-tiny-rn64" in fvlm_cfg and str(out / "clip_rn" / "tiny_clip.pt") in fvlm_cfg
    with open(out / "fvit" / "config.yaml") as f:
        assert "ovdet-tiny-vit-avg" in f.read()
    curve = clip["zero_shot_curve"]
    assert len(curve) >= 1 and curve[-1]["dataset"] == "ovdet_synthetic_captions_val"
    assert 0.0 <= curve[-1]["all"] <= 100.0
    pictures = report["pictures"]
    assert pictures["method"] != "fvlm_oracle"
    # scored from what the demo drew (its detections.json), on the pictured images
    assert pictures["label_precision"]["images"] == len(pictures["files"])
    drawn = json.loads((out / "pictures" / "detections.json").read_text())
    assert pictures["label_precision"]["n"] == len(drawn)
    assert {r["picture"] for r in drawn} <= set(pictures["files"])
    assert isinstance(pictures["rare_found_and_named"], bool)
    assert 0 <= pictures["rare_named_images"] <= pictures["rare_images"]
    # one image as it comes, plus one selected only when the method named a rare object somewhere
    assert len(pictures["files"]) == 1 + (pictures["selected"] is not None)
    assert pictures["selected"] is None or pictures["selected"] in pictures["files"]
    assert pictures["files"] and all(
        os.path.isfile(out / "pictures" / f) for f in pictures["files"]
    )
    assert "| F-VLM |" in md and "zero-shot crop accuracy" in md and "Step times" in md
    assert "Region zero-shot accuracy" in md and "F-VLM (attnpool) rare" in md
    assert "| F-VLM oracle (all classes' boxes) |" in md
    assert "| mask AP | mask APr |" in md
    with open(out / "fvlm" / "config.yaml") as f:
        assert "CLS_AGNOSTIC_MASK: true" in f.read()
    assert "Labels correct among drawn detections" in md and "a rare kind found and named" in md
    assert f"names a rare object correctly in {pictures['rare_named_images']} of the" in md
    # an added picture is said to be selected, with the method's rate beside it
    from benchmarks.synthetic.pipeline import format_results_markdown

    report["pictures"].update(selected="000042.png", rare_named_images=3, rare_images=5)
    md = format_results_markdown(report)
    assert "pictures/000042.png is selected" in md and "correctly in 3 of the 5 val images" in md


def test_second_run_reuses_every_step(smoke_run):
    out, first = smoke_run
    assert first.returncode == 0
    again = run_tool(out, "--from-scratch")
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    for step in STEPS:
        assert f"{step}: reused" in again.stdout, again.stdout
    # A changed setting (the seed) reruns the steps that depend on it.
    changed = run_tool(out, "--from-scratch", "--seed", "1", "--methods", "fvlm")
    assert changed.returncode == 0, (changed.stdout + changed.stderr)[-3000:]
    assert "clip_rn: running" in changed.stdout and "fvlm: running" in changed.stdout
    assert "clip: running" not in changed.stdout  # F-VLM alone needs only the ResNet


def test_ship_tiny_clip_records_the_tool_run(smoke_run, tmp_path):
    from benchmarks.ship_tiny_clip import main as ship

    out, result = smoke_run
    assert result.returncode == 0
    dest = tmp_path / "shipped" / "tiny.pt"  # never benchmarks/checkpoints in a test
    step = load_step(out / "clip")["record"]  # (the reuse test may have rerun it with seed 1)
    for run in (out / "clip", out / "clip" / "pretrain"):  # the step folder or the OUTPUT_DIR
        record = ship(["--run", str(run), "--dest", str(dest)])
        assert record == json.loads((tmp_path / "shipped" / "tiny.json").read_text())
        assert record["sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()
        assert record["bytes"] == os.path.getsize(dest)
        assert record["model_name"] == "ovdet-tiny-vit-avg" and record["seed"] == step["seed"]
        assert record["commands"] == [step["caption_command"], step["command"]]
        caption_cmd, pretrain_cmd = record["commands"]
        assert "tools/generate_synthetic_data.py" in caption_cmd
        assert "tools/pretrain_rovit.py" in pretrain_cmd
        assert record["caption_data"]["pretrain_style"] == "scene_crops"
        assert record["zero_shot_curve"] == step["zero_shot_curve"]
        assert record["zero_shot_benchmark_val"] == step["zero_shot"]
        assert record["machine"] and record["date"]
    # the ResNet's run: its own model name and pretraining config
    record = ship(["--run", str(out / "clip_rn"), "--dest", str(dest)])
    assert record["model_name"] == "ovdet-tiny-rn64"
    assert "configs/pretraining/tiny_synthetic_rn.yaml" in record["commands"][1]
    # a bare OUTPUT_DIR (not inside a benchmark step) needs the commands given
    bare = tmp_path / "bare"
    shutil.copytree(out / "clip" / "pretrain", bare)
    with pytest.raises(ValueError, match="--command"):
        ship(["--run", str(bare), "--dest", str(dest)])


def test_pretrain_variants_are_config_overrides_of_the_tool():
    from benchmarks.synthetic.ablations import PRETRAIN_VARIANT_NAMES
    from benchmarks.synthetic.pipeline import PRETRAIN_CONFIG, PRETRAIN_VARIANTS
    from ovdet_plugin import get_ovdet_cfg

    assert set(PRETRAIN_VARIANTS) == set(PRETRAIN_VARIANT_NAMES) == {
        "multipos", "cpe_multipos", "cpe_focal"
    }  # fmt: skip
    assert PRETRAIN_VARIANTS["multipos"] == []  # the config as it is
    for name, opts in PRETRAIN_VARIANTS.items():
        cfg = get_ovdet_cfg(PRETRAIN_CONFIG, list(opts))
        r = cfg.MODEL.OVD.ROVIT
        assert r.CPE == (name != "multipos")
        assert r.LOSS == ("focal" if name == "cpe_focal" else "multipos")
        if r.CPE:
            assert r.UP_POS_EMB_SIZE == 16
        if name == "cpe_focal":
            assert (r.LOGIT_BIAS_INIT, r.LOGIT_SCALE_INIT) == (-10.0, 10.0)


@pytest.mark.parametrize(
    "path, model_name",
    [(SHIPPED_CLIP, "ovdet-tiny-vit-avg"), (SHIPPED_CLIP_RN, "ovdet-tiny-rn64")],
)
def test_shipped_tiny_clip_matches_its_record(path, model_name):
    record_path = os.path.splitext(path)[0] + ".json"
    with open(record_path) as f:
        record = json.load(f)
    data = open(path, "rb").read()
    assert len(data) < 30 * 10**6  # issue 10: at most 30 MB each
    assert hashlib.sha256(data).hexdigest() == record["sha256"]
    assert record["command"] and "seed" in record and record["model_name"] == model_name
    from ovdet_plugin.clip import build_clip_model

    model = build_clip_model(record["model_name"], path)  # strict state-dict load
    assert model.visual.image_size in (64, (64, 64))


@pytest.mark.parametrize(
    "tower, size_field", [("vit", "pretrain_steps"), ("rn", "pretrain_steps_rn")]
)
def test_shipped_tiny_clip_schedule_is_the_configs_and_the_benchmarks(tower, size_field):
    """The shipped file is what its config and ``--from-scratch`` train: the iterations of its
    recorded pretraining command (its SOLVER.MAX_ITER override, else the config's) equal the
    config's SOLVER.MAX_ITER and the default size's pretraining steps."""
    from detectron2.config import get_cfg

    from ovdet_plugin.config import add_ovdet_config

    clip = TINY_CLIPS[tower]
    with open(os.path.splitext(clip.shipped)[0] + ".json") as f:
        command = json.load(f)["commands"][1]
    assert os.path.relpath(clip.pretrain_config, REPO_ROOT) in command
    cfg = get_cfg()
    add_ovdet_config(cfg)
    cfg.merge_from_file(clip.pretrain_config)
    override = re.search(r"SOLVER\.MAX_ITER (\d+)", command)
    recorded = int(override.group(1)) if override else cfg.SOLVER.MAX_ITER
    assert recorded == cfg.SOLVER.MAX_ITER == getattr(SIZES["default"], size_field)


def test_corrupt_checkpoint_is_refused_with_a_clear_message(tmp_path):
    ckpt = tmp_path / "tiny.pt"
    torch.save({"x": torch.zeros(1)}, ckpt)
    (tmp_path / "tiny.json").write_text(json.dumps({"sha256": "0" * 64}))
    bench = SyntheticBenchmark(
        tmp_path / "out", SIZES["smoke"], clip_checkpoint=str(ckpt), log=lambda s: None
    )
    with pytest.raises(ValueError, match="does not match the sha256"):
        bench.run()


def test_unknown_method_is_refused():
    with pytest.raises(ValueError, match="Unknown methods"):
        SyntheticBenchmark("/nonexistent", methods=["fvlm", "yolo"])


def _fake_steps(bench, fake):
    """Replace every step of ``bench._steps`` with ``fake(name, record)``."""
    bench._clip_step = lambda name: fake(TINY_CLIPS[name].step, {"path": f"{name}.pt"})
    bench._clipself_step = lambda clip: fake("clipself", {"path": "cs.pt"})
    bench._vild_step = lambda clips, fvlm: fake("vild_embeddings", {"dir": fvlm["weights"] + "/e"})
    seen_inputs = {}

    def detector(method, clips, clipself, vild_dir):
        seen_inputs[method.key] = (clips[method.clip], clipself, vild_dir)
        return fake(method.key, {"weights": method.key})

    bench._detector_step = detector
    return seen_inputs


def test_steps_wait_for_their_inputs_and_keep_both_cores_busy(tmp_path):
    """_steps with the steps replaced by sleeps: each starts after what it needs, at most
    ``jobs`` at once; the tiny CLIPs first, then the F-VLM detector and RO-ViT, CLIPSelf before
    ViLD's targets, the oracle last (the order that ended a timed demo's training earliest)."""
    import threading

    bench = SyntheticBenchmark(tmp_path / "out", SIZES["smoke"], jobs=2, log=lambda s: None)
    lock, events, running, peak = threading.Lock(), [], set(), [0]

    def fake(name, record):
        with lock:
            events.append(("start", name))
            running.add(name)
            peak[0] = max(peak[0], len(running))
        time.sleep(0.05)
        with lock:
            events.append(("end", name))
            running.discard(name)
        return record

    seen_inputs = _fake_steps(bench, fake)
    done = bench._steps()
    assert set(done) == set(METHODS) | {"clip", "clip_rn", "clipself", "vild_embeddings"}
    assert bench._clips(done) == {"vit": {"path": "vit.pt"}, "rn": {"path": "rn.pt"}}
    assert peak[0] == 2
    starts = [name for kind, name in events if kind == "start"]
    assert set(starts[:2]) == {"clip", "clip_rn"}
    assert set(starts[2:4]) == {"fvlm", "rovit"}
    assert starts.index("clipself") < starts.index("vild_embeddings")
    assert starts[-1] == "fvlm_oracle"  # the oracle last

    def finished_before_started(first, then):
        return events.index(("end", first)) < events.index(("start", then))

    assert finished_before_started("clip_rn", "fvlm")
    assert finished_before_started("clip", "clipself")
    assert finished_before_started("fvlm", "vild_embeddings")
    assert finished_before_started("vild_embeddings", "vild")
    assert finished_before_started("clipself", "fvit")
    assert seen_inputs["fvit"] == ({"path": "vit.pt"}, {"path": "cs.pt"}, "")
    assert seen_inputs["vild"][0::2] == ({"path": "rn.pt"}, "fvlm/e")  # its tower, its targets


def test_the_tiny_clips_are_made_side_by_side_with_two_jobs(tmp_path):
    """With jobs=2 both tiny CLIPs (the two from-scratch pretrainings) must be in progress at
    once (a barrier both must reach); with jobs=1 one at a time, the ViT first."""
    import threading

    both_running = threading.Barrier(2, timeout=30)

    def side_by_side(name, record):
        if name in ("clip", "clip_rn"):
            both_running.wait()  # raises BrokenBarrierError if the other never starts
        return record

    bench = SyntheticBenchmark(tmp_path / "a", SIZES["smoke"], jobs=2, log=lambda s: None)
    _fake_steps(bench, side_by_side)
    assert bench._clips(bench._steps()) == {"vit": {"path": "vit.pt"}, "rn": {"path": "rn.pt"}}

    lock, running, peak, starts = threading.Lock(), [0], [0], []

    def one_at_a_time(name, record):
        with lock:
            starts.append(name)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return record

    bench = SyntheticBenchmark(tmp_path / "b", SIZES["smoke"], jobs=1, log=lambda s: None)
    _fake_steps(bench, one_at_a_time)
    bench._steps()
    assert starts[:2] == ["clip", "clip_rn"] and peak[0] == 1


def test_f_vlm_starts_while_the_vit_still_pretrains(tmp_path):
    """With jobs=2 the F-VLM detector needs only the ResNet: it starts while the ViT step is
    still running (the ViT waits until F-VLM has started, or 30 s), instead of after both."""
    import threading

    fvlm_started = threading.Event()
    waited = {}

    def fake(name, record):
        if name == "fvlm":
            fvlm_started.set()
        if name == "clip":
            waited["clip"] = fvlm_started.wait(timeout=30)
        return record

    bench = SyntheticBenchmark(tmp_path / "out", SIZES["smoke"], jobs=2, log=lambda s: None)
    _fake_steps(bench, fake)
    bench._steps()
    assert waited == {"clip": True}


def test_a_failed_training_step_stops_the_run(tmp_path):
    bench = SyntheticBenchmark(tmp_path / "out", SIZES["smoke"], jobs=2, log=lambda s: None)

    def fake(name, record):
        if name == "fvlm":
            raise RuntimeError("train_net.py failed")
        return record

    _fake_steps(bench, fake)
    with pytest.raises(RuntimeError, match="train_net.py failed"):
        bench._steps()


def test_a_failed_step_is_said_at_once_while_the_other_runs_on(tmp_path):
    """A failing pretraining is logged when it fails, not after the other (40-minute) one ends:
    the step still running waits until the FAILED line appears (or 30 s), then finishes."""
    import threading

    said_failed = threading.Event()

    def log(line):
        if "clip: FAILED (pretrain_rovit.py failed (exit 1); log ...); the run stops" in line:
            said_failed.set()

    bench = SyntheticBenchmark(tmp_path / "out", SIZES["smoke"], jobs=2, log=log)
    _fake_steps(bench, lambda name, record: record)
    waited = {}

    def clip_step(name):
        def run(folder):
            if name == "vit":
                raise RuntimeError("pretrain_rovit.py failed (exit 1); log ...\nits tail")
            waited["rn"] = said_failed.wait(timeout=30)
            return {}

        return bench._step(TINY_CLIPS[name].step, {"k": name}, run)

    bench._clip_step = clip_step
    with pytest.raises(RuntimeError, match="pretrain_rovit.py failed"):
        bench._steps()
    assert waited == {"rn": True}  # the failure was said while clip_rn was still running
    assert load_step(tmp_path / "out" / "clip") is None  # a failed step leaves no step.json
    assert load_step(tmp_path / "out" / "clip_rn") is not None


def _fake_results(path, methods, ap, region=None, map_region=None):
    os.makedirs(path, exist_ok=True)
    recs = {}
    for k in methods:
        box = {"AP": ap, "AP50": ap, "APr": ap / 2, "APc": ap, "APf": ap}
        recs[k] = {"title": k, "fused": box, "mask": dict(box, AP=ap / 2)}
        if ALL_METHODS[k].fused:
            recs[k]["detector_only"] = dict(box, APr=ap / 4)
        if region is not None:
            recs[k]["region_zero_shot"] = {"r": region, "all": region / 2, "scorer": "avgpool"}
        if map_region is not None:  # the paper's region feature, beside the fused scorer's
            recs[k]["region_zero_shot_map"] = {"r": map_region, "all": map_region / 2}
    report = {"methods": recs, "clip": {"zero_shot": {"r": 50.0, "all": 40.0}}}
    with open(os.path.join(path, "results.json"), "w") as f:
        json.dump(report, f)


def _val_with_rare_images():
    """Six val images: 2, 4, 5 and 6 hold a rare object (category 1), 1 and 3 only frequent ones."""
    cats = [
        {"id": 1, "name": "crown", "frequency": "r"},
        {"id": 2, "name": "car", "frequency": "f"},
        {"id": 3, "name": "key", "frequency": "c"},
        {"id": 4, "name": "star", "frequency": "f"},
    ]
    anns = [(1, 2), (2, 1), (2, 2), (3, 3), (4, 1), (5, 1), (6, 1)]
    return {
        "categories": cats,
        "images": [{"id": i, "file_name": f"images/val/{i:06d}.png"} for i in range(1, 7)],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": [0, 0, 10, 10]}
                        for k, (i, c) in enumerate(anns)],
    }  # fmt: skip


def test_pictures_add_a_rare_find_only_when_the_first_images_have_none():
    from benchmarks.synthetic.pipeline import _picture_image_ids, _picture_inputs, _png_name

    val = _val_with_rare_images()
    # the first 2 images holding a rare object; the method names one in image 4: not added
    assert _picture_image_ids(val, 2, [4, 5]) == ([2, 4], None)
    # named only in images 5 and 6: the first of them is added and said to be selected
    assert _picture_image_ids(val, 2, [6, 5]) == ([2, 4, 5], 5)
    # named nowhere: nothing to add
    assert _picture_image_ids(val, 2, []) == ([2, 4], None)
    paths, vocabulary = _picture_inputs(val, "/d", [2, 5])
    assert paths == ["/d/images/val/000002.png", "/d/images/val/000005.png"]
    assert vocabulary == ["car", "crown", "key", "star"]  # present names, then two absent kinds
    assert _png_name(val, 5) == "000005.png"


def test_drawn_detections_map_to_val_ids_and_score_as_drawn():
    from benchmarks.synthetic.pipeline import _drawn_as_results
    from ovdet_plugin.evaluation import label_precision

    val = _val_with_rare_images()
    saved = [
        {"file_name": "/d/images/val/000002.png", "picture": "000002.png", "category": "crown",
         "bbox": [1, 0, 10, 10], "score": 0.9},  # right: a crown is there
        {"file_name": "/d/images/val/000002.png", "picture": "000002.png", "category": "key",
         "bbox": [0, 0, 10, 10], "score": 0.95},  # wrong: no key in image 2
    ]  # fmt: skip
    drawn = _drawn_as_results(saved, val, "/d")
    assert [(d["image_id"], d["category_id"]) for d in drawn] == [(2, 1), (2, 3)]
    lp = label_precision(drawn, val, 0.8, 6, image_ids=[2])
    assert (lp["n"], lp["correct"], lp["rare_correct_images"]) == (2, 1, [2])


def test_ablation_table_mean_and_spread(tmp_path):
    _fake_results(tmp_path, list(METHODS), 10.0)
    _fake_results(tmp_path / "ablations" / "seed1", list(METHODS), 20.0)
    _fake_results(tmp_path / "ablations" / "seed2", list(METHODS), 30.0)
    _fake_results(tmp_path / "ablations" / "pretrain_cpe_focal", ["rovit"], 6.0)
    table = collect_ablations(str(tmp_path), (0, 1, 2))
    fvlm = table["headline"]["fvlm"]
    assert "region_r" not in fvlm and "Region zero-shot" not in format_ablations_markdown(table)
    for i, folder in enumerate([tmp_path, tmp_path / "ablations" / "seed1"]):
        _fake_results(folder, list(METHODS), 10.0 * (i + 1), region=20.0 + 10 * i)
    _fake_results(tmp_path / "ablations" / "seed2", list(METHODS), 30.0, region=40.0)
    table = collect_ablations(str(tmp_path), (0, 1, 2))
    fvlm = table["headline"]["fvlm"]
    assert fvlm["region_r"]["mean"] == pytest.approx(30.0) and fvlm["region_scorer"] == "avgpool"
    assert "F-VLM (avgpool) rare 30.0 ± 8.2, all 15.0 ± 4.1" in format_ablations_markdown(table)
    assert not any("CLIPSelf: dense region" in c["claim"] for c in table["claims"])  # no rows
    assert fvlm["seeds"] == [0, 1, 2]
    assert fvlm["AP"]["mean"] == pytest.approx(20.0)
    assert fvlm["AP"]["std"] == pytest.approx((200 / 3) ** 0.5)
    assert fvlm["APr_detector_only"]["mean"] == pytest.approx(5.0)
    assert fvlm["APf_detector_only"]["mean"] == pytest.approx(20.0)
    assert "APr_detector_only" not in table["headline"]["vild"]
    assert fvlm["mask_AP"]["mean"] == pytest.approx(10.0)  # mask AP = box AP / 2 here
    assert fvlm["mask_APr"]["mean"] == pytest.approx(10.0)
    focal = table["pretraining"]["cpe_focal"]
    assert focal["seeds"] == [0] and focal["runs"][0]["rovit"]["fused"]["APr"] == 3.0
    assert focal["APr"] == {"mean": 3.0, "std": 0.0} and "region_r" not in focal
    md = format_ablations_markdown(table)
    assert "20.0 ± 8.2" in md
    assert "| CPE + focal | 0 | 50.0 ± 0.0 / 40.0 ± 0.0 | - | 6.0 ± 0.0 | 3.0 ± 0.0 |" in md
    assert "| 10.0 ± 4.1 | 10.0 ± 4.1 |" in md  # the mask columns
    assert "vild_text" not in table["headline"]  # no run of it: no row, no claim
    assert table["claims"][-1]["claim"].startswith("best APr (F-VLM)")  # ties: the first
    shutil.rmtree(tmp_path / "ablations")


def test_ablation_claims_compare_means_against_the_spread(tmp_path):
    """A claim holds when its difference of the means exceeds the two stds combined; seed 0 of
    the ablation methods comes from the "methods" job."""
    ablations = ["vild_text", "fvit_no_clipself"]
    _fake_results(tmp_path, list(METHODS), 10.0)
    _fake_results(tmp_path / "ablations" / "methods", ablations, 4.0)
    _fake_results(tmp_path / "ablations" / "seed1", list(METHODS) + ablations, 11.0, 30.0)
    _fake_results(tmp_path / "ablations" / "seed2", list(METHODS) + ablations, 12.0, 40.0)
    table = collect_ablations(str(tmp_path), (0, 1, 2))
    assert table["headline"]["vild_text"]["seeds"] == [0, 1, 2]
    # seed 0 has no region figure: no region mean over a part of the seeds, no region claim
    assert "region_r" not in table["headline"]["fvlm"]
    assert not any("region" in c["claim"] for c in table["claims"])
    # with it: CLIPSelf's dense region claim, F-ViT (region 10, 30, 40) vs without (5, 30, 40)
    _fake_results(tmp_path, list(METHODS), 10.0, 10.0)
    _fake_results(tmp_path / "ablations" / "methods", ablations, 4.0, 5.0)
    region = {c["claim"]: c for c in collect_ablations(str(tmp_path), (0, 1, 2))["claims"]}
    dense = region["CLIPSelf: dense region zero-shot rare with > without"]
    assert dense["diff"] == pytest.approx(5 / 3) and not dense["holds"]
    assert table["headline"]["vild_text"]["APr"]["mean"] == pytest.approx(27 / 6)
    claims = {c["claim"]: c for c in table["claims"]}
    # ViLD APr 5, 5.5, 6 vs ViLD-text 2, 5.5, 6: difference 1.0 < the stds (0.41 + 1.78)
    vild = claims["ViLD: ensemble APr > ViLD-text APr"]
    assert vild["diff"] == pytest.approx(1.0) and not vild["holds"]
    # fused APr (ap / 2) against detector-only APr (ap / 4): 5.5 vs 2.75, stds 0.41 + 0.20
    fused = claims["F-VLM: fused APr > detector-only APr"]
    assert fused["diff"] == pytest.approx(2.75) and fused["holds"]
    best = [c for c in table["claims"] if "ratio" in c][0]
    assert best["ratio"] == pytest.approx(0.5) and not best["holds"]
    md = format_ablations_markdown(table)
    assert "ViLD: ensemble APr > ViLD-text APr: 5.5 ± 0.4 vs 4.5 ± 1.8" in md
    assert "(difference +1.0), not shown" in md and "**holds**" in md


def test_cpe_claim_over_the_seeds_of_both_pretraining_variants(tmp_path):
    """RO-ViT's CPE claim compares the region zero-shot accuracy of the two variants over the
    seeds each ran (seed 0's folder has no suffix); the jobs run both variants on every seed."""
    from benchmarks.synthetic.ablations import ablation_jobs

    jobs = ablation_jobs("clip.pt", (0, 1, 2), 3000, "default")
    assert {"pretrain_multipos", "pretrain_cpe_multipos_seed2", "pretrain_cpe_focal"} <= set(jobs)
    assert "pretrain_cpe_focal_seed1" not in jobs
    args = jobs["pretrain_cpe_multipos_seed2"]
    assert args[args.index("--seed") + 1] == "2" and "--from-scratch" in args
    assert "--seed" not in jobs["pretrain_multipos"]
    for seed, (none, cpe) in enumerate([(2.0, 10.0), (3.0, 12.0), (4.0, 14.0)]):
        suffix = f"_seed{seed}" if seed else ""
        # the fused scorer (crops of the pixels here) says 80 for both: the claim reads the map
        _fake_results(
            tmp_path / "ablations" / f"pretrain_multipos{suffix}", ["rovit"], 8, 80.0, none
        )
        _fake_results(
            tmp_path / "ablations" / f"pretrain_cpe_multipos{suffix}", ["rovit"], 8, 80.0, cpe
        )
    table = collect_ablations(str(tmp_path), (0, 1, 2))
    cpe = table["pretraining"]["cpe_multipos"]
    assert cpe["seeds"] == [0, 1, 2] and cpe["region_r"]["mean"] == pytest.approx(12.0)
    claims = {c["claim"]: c for c in table["claims"]}
    rare = claims["RO-ViT pretraining: region zero-shot rare with CPE > without"]
    assert rare["diff"] == pytest.approx(9.0) and rare["holds"]
    # "all" is half of rare here: 6.0 vs 1.5, stds 0.82 + 0.41
    assert claims["RO-ViT pretraining: region zero-shot all with CPE > without"]["holds"]
    md = format_ablations_markdown(table)
    assert "| CPE + multi-positive softmax | 0, 1, 2 |" in md and "12.0 ± 1.6 / 6.0 ± 0.8" in md
    assert "region zero-shot rare with CPE > without: 12.0 ± 1.6 vs 3.0 ± 0.8" in md


def test_group_accuracy_per_frequency_group():
    import math

    from ovdet_plugin.evaluation.zero_shot_crops import group_accuracy

    acc = group_accuracy([1, 2, 3, 3], [1, 2, 4, 3], ["r", "r", "f", "f"])
    assert (acc["r"], acc["f"], acc["all"]) == (100.0, 50.0, 75.0)
    assert (acc["n_r"], acc["n_c"], acc["n_f"], acc["n_all"]) == (2, 0, 2, 4)
    assert math.isnan(acc["c"])


def test_missing_shipped_checkpoint_and_unknown_variant_are_refused(tmp_path, monkeypatch):
    import benchmarks.synthetic.pipeline as bench_module

    with pytest.raises(ValueError, match="Unknown pretraining variant"):
        SyntheticBenchmark(tmp_path, pretrain_variant="siglip")
    from dataclasses import replace

    gone = replace(bench_module.TINY_CLIPS["vit"], shipped=str(tmp_path / "gone.pt"))
    monkeypatch.setitem(bench_module.TINY_CLIPS, "vit", gone)
    bench = SyntheticBenchmark(tmp_path / "out", SIZES["smoke"], log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="--from-scratch"):
        bench.run()


def test_detector_iterations_follow_each_configs_own_length():
    """fvlm.yaml trains at 160 px for 1000 iterations (the time of 1200 at 128 px): the benchmark
    scales each size's detector length by the config's own SOLVER.MAX_ITER, so the default run
    keeps that ratio and the smoke run stays tiny."""
    from benchmarks.synthetic.pipeline import SIZES, detector_iters
    from ovdet_plugin.config import get_ovdet_cfg

    fvlm = get_ovdet_cfg(os.path.join(REPO_ROOT, "configs", "synthetic", "fvlm.yaml"))
    assert fvlm.INPUT.MIN_SIZE_TRAIN == (160,) and fvlm.INPUT.MIN_SIZE_TEST == 160
    assert detector_iters("fvlm.yaml", SIZES["default"]) == fvlm.SOLVER.MAX_ITER == 1000
    for config in ("vild.yaml", "fvit_clipself.yaml", "rovit.yaml"):
        assert detector_iters(config, SIZES["default"]) == 1200
        assert detector_iters(config, SIZES["smoke"]) == SIZES["smoke"].detector_iters
    assert 1 <= detector_iters("fvlm.yaml", SIZES["smoke"]) < SIZES["smoke"].detector_iters
