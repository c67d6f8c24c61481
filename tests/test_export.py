"""Export (tools/export_model.py, ovdet_plugin/export.py): fused F-VLM (with masks), F-ViT and
ViLD-ensemble, each with a typed vocabulary baked in, to TorchScript and ONNX; both equal eager
PyTorch (ONNX Runtime on the CPU) within 1e-4 + 1e-4 |eager| on the trace image and on an image of
another size, with the same detections."""

import importlib.util
import json
import os

import pytest
import torch
from conftest import REPO_ROOT, load_test_config
from detectron2.modeling import build_model

import ovdet_plugin
from ovdet_plugin.export import (
    compare_outputs,
    export_onnx,
    export_torchscript,
    mha_fast_path_off,
    run_onnx,
    trace,
)

pytest.importorskip("onnxruntime", reason="the ONNX check needs onnxruntime (dev extras)")

CASES = {
    "tiny_fvlm": ["MODEL.MASK_ON", "True", "MODEL.ROI_MASK_HEAD.CLS_AGNOSTIC_MASK", "True",
                  "MODEL.ROI_MASK_HEAD.CONV_DIM", "16", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1"],
    # F-VLM with the region crop on C4 and the last stage per region (VLM_SCORER.CROP_STAGE)
    "tiny_fvlm:res4": ["MODEL.OVD.VLM_SCORER.CROP_STAGE", "res4"],
    "tiny_fvit": ["MODEL.OVD.BACKBONE.SFP_SQUARE_PAD", "192"],
    # F-ViT's scorer on each region's pixels, 1x and 1.5x (VLM_SCORER.CROP_STAGE "image")
    "tiny_fvit:image": ["MODEL.OVD.BACKBONE.SFP_SQUARE_PAD", "192",
                        "MODEL.OVD.VLM_SCORER.CROP_STAGE", "image"],
    "tiny_vild_ensemble": [],
}  # fmt: skip


def image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(3, h, w, generator=g) * 80
    img[:, h // 4 : h // 2, w // 5 : w // 2] = 220.0
    return img


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_equals_eager(name, tmp_path, one_torch_thread):
    # threshold 0: random weights give low scores, and there must be detections to compare
    cfg = load_test_config(
        name.split(":")[0], "MODEL.OVD.TEXT.PROMPTS", "single",
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", *CASES[name],
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ovdet_plugin.set_vocabulary(model, "cat, dog", cfg)
    first, second = image(128, 160, 0), image(96, 128, 1)
    exported = trace(model, first)
    assert exported.class_names == ["cat", "dog"]
    expected = ["pred_boxes", "pred_classes", "scores", "image_size"]
    if name == "tiny_fvlm":
        expected.insert(2, "pred_masks")
    if name.startswith("tiny_fvlm"):
        assert model.roi_heads.vlm_scorer is not None and model.roi_heads.fusion_rule == "fvlm"
    if not name.startswith("tiny_vild"):
        assert model.roi_heads.vlm_scorer.crop_stage == (name.partition(":")[2] or "res5")
    assert exported.output_names == expected
    ts = export_torchscript(exported, str(tmp_path / "model.ts"))
    export_onnx(exported, str(tmp_path / "model.onnx"))
    loaded = torch.jit.load(str(tmp_path / "model.ts"))
    for img in (first, second):
        with torch.no_grad(), mha_fast_path_off():
            reference = exported.adapter(img)
            outputs_ts = loaded(img)
        assert len(reference[0]) > 0  # detections to compare
        classes = reference[exported.output_names.index("pred_classes")]
        assert int(classes.max()) < 2  # the baked 2-class vocabulary
        compare_outputs(reference, outputs_ts, exported.output_names)
        compare_outputs(
            reference, run_onnx(str(tmp_path / "model.onnx"), img), exported.output_names
        )
    assert ts is not None


def test_compare_outputs_catches_differences():
    ref = [torch.tensor([1.0, 2.0]), torch.tensor([0, 1])]
    compare_outputs(ref, [torch.tensor([1.00005, 2.0]), torch.tensor([0, 1])], ["a", "b"])
    with pytest.raises(AssertionError, match="output a: max"):
        compare_outputs(ref, [torch.tensor([1.01, 2.0]), torch.tensor([0, 1])], ["a", "b"])
    with pytest.raises(AssertionError, match="shape"):
        compare_outputs(ref, [torch.tensor([1.0]), torch.tensor([0, 1])], ["a", "b"])


def test_vit_export_needs_square_padding():
    cfg = load_test_config("tiny_fvit", "MODEL.OVD.TEXT.PROMPTS", "single")
    model = build_model(cfg).eval()
    with pytest.raises(ValueError, match="SFP_SQUARE_PAD"):
        trace(model, image(128, 160, 0))
    with pytest.raises(ValueError, match="model.eval"):
        trace(model.train(), image(128, 160, 0))


def test_export_tool(tmp_path, one_torch_thread):
    path = os.path.join(REPO_ROOT, "tools", "export_model.py")
    spec = importlib.util.spec_from_file_location("export_model_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "exported"
    rc = tool.main(
        [
            "--config-file", os.path.join(REPO_ROOT, "configs", "test", "tiny_fvlm.yaml"),
            "--vocabulary", "cat, remote control, sofa",
            "--output", str(out),
            "MODEL.OVD.TEXT.PROMPTS", "single",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "160",
        ]
    )  # fmt: skip
    assert rc == 0
    assert (out / "model.ts").is_file() and (out / "model.onnx").is_file()
    meta = json.loads((out / "vocabulary.json").read_text())
    assert meta["classes"] == ["cat", "remote control", "sofa"]
    assert meta["outputs"][0] == "pred_boxes"
