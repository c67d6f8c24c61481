"""Both region-aware trainers through Detectron2's ``launch`` with 2 processes (gloo on CPU):
they train, checkpoint, and a run stopped half-way ("killed") then ``--resume``d ends with the
same weights as an uninterrupted run of the same length (fixed seeds)."""

import csv
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.engine import launch
from detectron2.modeling import build_backbone
from PIL import Image

import ovdet_plugin
from ovdet_plugin.clip import build_clip_model
from ovdet_plugin.engine.pretrain import argument_parser, clipself_main, rovit_main
from ovdet_plugin.pretraining.clipself import ensemble_state_dict

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _images(folder, n=12, seed=0):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = rng.integers(0, 255, (40 + 3 * i, 64, 3), dtype=np.uint8)
        img[10:30, 10 + i : 40 + i] = rng.integers(0, 255, 3, dtype=np.uint8)  # a coloured box
        p = os.path.join(folder, f"img_{i:02d}.png")
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def _launch(main, config, out, *opts, stop=0, resume=False):
    argv = ["--config-file", os.path.join(REPO_ROOT, config), "--num-gpus", "2"]
    argv += ["--dist-url", "auto"] + (["--resume"] if resume else [])
    argv += ["--stop-after-iter", str(stop)] if stop else []
    argv += ["OUTPUT_DIR", str(out), *opts]
    args = argument_parser("test").parse_args(argv)
    launch(main, 2, dist_url="auto", args=(args,))


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(autouse=True)
def _one_thread_per_process(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 2 processes on 2 shared cores


def test_rovit_two_processes_and_resume(tmp_path):
    _images(tmp_path / "imgs")
    with open(tmp_path / "caps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "caption"])
        w.writerows([(f"imgs/img_{i:02d}.png", f"a box number {i}") for i in range(12)])
    cfg = "configs/test/tiny_rovit_pretrain.yaml"
    data = ("MODEL.OVD.ROVIT.CAPTION_FILES", str(tmp_path / "caps.csv"))
    full, part = tmp_path / "full", tmp_path / "part"
    _launch(rovit_main, cfg, full, *data)
    _launch(rovit_main, cfg, part, *data, stop=2)
    assert (part / "model_0000001.pth").exists() and not (part / "model_final.pth").exists()
    stopped = _model(part / "model_0000001.pth")
    _launch(rovit_main, cfg, part, *data, resume=True)
    resumed = _model(part / "model_final.pth")
    _assert_same_weights(_model(full / "model_final.pth"), resumed)
    # the resumed run did train (iterations 2, 3 changed the weights)
    key = "clip.visual.transformer.resblocks.0.attn.in_proj_weight"
    assert not torch.equal(stopped[key], resumed[key])
    # logs: console/JSON metrics of both ranks' loss, tensorboard events, the exported CLIP
    assert (full / "metrics.json").read_text().count("total_loss") >= 2
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(full))
    model = build_clip_model("ovdet-tiny-vit", str(full / "rovit_clip_final.pt"))
    torch.testing.assert_close(
        model.state_dict()["visual.proj"], resumed["clip.visual.proj"], rtol=0, atol=0
    )


def test_clipself_two_processes_resume_and_export(tmp_path):
    _images(tmp_path / "imgs")
    cfg = "configs/test/tiny_clipself.yaml"
    opts = (
        "MODEL.OVD.CLIPSELF.IMAGE_FOLDER",
        str(tmp_path / "imgs"),
        "MODEL.OVD.CLIP.MODEL_NAME",
        "ovdet-tiny-vit16",
    )
    full, part = tmp_path / "full", tmp_path / "part"
    _launch(clipself_main, cfg, full, *opts)
    _launch(clipself_main, cfg, part, *opts, stop=2)
    assert not (part / "model_final.pth").exists()
    _launch(clipself_main, cfg, part, *opts, resume=True)
    final = _model(full / "model_final.pth")
    _assert_same_weights(final, _model(part / "model_final.pth"))

    # the teacher never changed; the student did (only its transformer blocks)
    init = build_clip_model("ovdet-tiny-vit16")  # not the seeded init: compare student vs teacher
    student = {k[len("clip.") :]: v for k, v in final.items() if k.startswith("clip.")}
    teacher = {
        "visual." + k[len("teacher.") :]: v for k, v in final.items() if k.startswith("teacher.")
    }
    blk = "visual.transformer.resblocks.1.mlp.c_fc.weight"
    assert not torch.equal(student[blk], teacher[blk])
    for k in (
        "visual.proj",
        "visual.positional_embedding",
        "visual.conv1.weight",
        "text_projection",
    ):
        assert torch.equal(student.get(k, teacher.get(k)), teacher.get(k, student[k]))
    assert set(student) == set(init.state_dict())

    # the export is alpha * student + (1 - alpha) * teacher, a full open_clip state dict
    exported = torch.load(full / "clipself_final.pt", map_location="cpu")
    want = ensemble_state_dict(student, teacher, 0.7)
    assert exported.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(exported[k], want[k], rtol=0, atol=1e-7)
    torch.testing.assert_close(
        exported[blk], 0.7 * student[blk] + 0.3 * teacher[blk], rtol=0, atol=1e-7
    )
    assert (full / "clipself_0000001.pt").exists()  # exported at each checkpoint period too

    # ... and loads as the F-ViT backbone with one config line
    dcfg = get_cfg()
    ovdet_plugin.add_ovdet_config(dcfg)
    dcfg.merge_from_file(os.path.join(REPO_ROOT, "configs/test/tiny_clip_vit_sfp.yaml"))
    dcfg.MODEL.OVD.BACKBONE.PRETRAINED = str(full / "clipself_final.pt")  # the one line
    backbone = build_backbone(dcfg)
    state = {
        k: v for k, v in backbone.state_dict().items() if k.endswith("resblocks.1.mlp.c_fc.weight")
    }
    assert state and all(torch.equal(v, exported[blk]) for v in state.values())
