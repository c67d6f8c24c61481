"""The tiny-CLIP pretraining recipe of the generated-data benchmark, through the product's tools:
scene-crop caption images from the generator, the multi-positive loss of ``RegionAwareCLIP``
(``MODEL.OVD.ROVIT.LOSS "multipos"``), and ``tools/pretrain_rovit.py``'s zero-shot evaluation
hook with ``configs/pretraining/tiny_synthetic.yaml``."""

import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.engine import launch
from PIL import Image

from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.data.synthetic import generate_synthetic_dataset, load_captions
from ovdet_plugin.engine.pretrain import argument_parser, rovit_main
from ovdet_plugin.pretraining.contrastive_losses import (
    caption_ids,
    multipositive_softmax_loss,
    softmax_contrastive_loss,
)
from ovdet_plugin.pretraining.rovit import RegionAwareCLIP, init_logit_scale_and_bias

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(seed=3, num_train=60, num_val=8, num_pretrain=30, progress=False)


@pytest.fixture(scope="module")
def scene_crops(tmp_path_factory):
    out = tmp_path_factory.mktemp("captions") / "ovdet_synthetic_captions"
    generate_synthetic_dataset(out, pretrain_style="scene_crops", **SMALL)
    return str(out)


def test_caption_ids_equal_exactly_for_equal_captions():
    ids = caption_ids(["a photo of a cat.", "A photo of  a cat.", "a photo of a dog.", "cat"])
    assert ids[0] == ids[1]  # case and whitespace do not make another caption
    assert len({int(i) for i in ids[1:]}) == 3


def _model(loss):
    torch.manual_seed(0)
    name = "ovdet-tiny-vit-avg"
    clip = build_clip_model(name, "")
    return RegionAwareCLIP(clip_model=clip, tokenizer=get_clip_tokenizer(name), loss=loss)


def test_multipos_loss_is_softmax_for_unique_captions_and_not_for_repeats():
    torch.manual_seed(1)
    img = F.normalize(torch.randn(6, 64), dim=-1)
    txt = F.normalize(torch.randn(6, 64), dim=-1)
    model = _model("multipos")
    scale = model.clip.logit_scale.exp()
    unique = caption_ids([f"caption {i}" for i in range(6)])
    got = model.compute_loss(img, txt, unique)["loss_contrastive"]
    assert torch.allclose(got, softmax_contrastive_loss(img, txt, scale), atol=1e-6)
    repeated = caption_ids(["a", "b", "a", "c", "a", "b"])
    got = model.compute_loss(img, txt, repeated)["loss_contrastive"]
    assert torch.allclose(got, multipositive_softmax_loss(img, txt, scale, repeated), atol=1e-6)
    assert not torch.allclose(got, softmax_contrastive_loss(img, txt, scale), atol=1e-3)
    with pytest.raises(ValueError, match="caption ids"):
        model.compute_loss(img, txt)


def test_multipos_forward_treats_repeated_captions_as_positives():
    model = _model("multipos")
    images = torch.randn(4, 3, 64, 64)
    caps = ["a photo of a star.", "a photo of a heart.", "a photo of a star.", "a photo of a key."]
    loss = model({"images": images, "captions": caps})["loss_contrastive"]
    ids = torch.tensor([0, 1, 0, 2])
    scale = model.clip.logit_scale.exp()
    img, txt = model.encode_image(images), model.encode_text(caps)
    assert torch.allclose(loss, multipositive_softmax_loss(img, txt, scale, ids), atol=1e-6)
    with pytest.raises(ValueError, match="caption strings"):
        model({"images": images, "captions": get_clip_tokenizer("ovdet-tiny-vit-avg")(caps)})


def test_scene_crops_keep_the_detection_splits_and_caption_every_crop(scene_crops, tmp_path):
    plain = tmp_path / "plain"
    generate_synthetic_dataset(plain, **SMALL)
    for split in ("train.json", "train_all.json", "val.json"):  # only the captions differ
        with open(os.path.join(scene_crops, split), "rb") as a, open(plain / split, "rb") as b:
            assert a.read() == b.read(), split
    caps = load_captions(scene_crops)
    assert len(caps) == SMALL["num_pretrain"]
    names = {
        c["name"] for c in json.load(open(os.path.join(scene_crops, "val.json")))["categories"]
    }
    for rec in caps:
        (name,) = rec["category_names"]
        assert name in names and rec["caption"] == f"a photo of a {name}."
        with Image.open(os.path.join(scene_crops, rec["file_name"])) as im:
            assert im.size == (64, 64)
    pixels = [np.asarray(Image.open(os.path.join(scene_crops, r["file_name"]))) for r in caps[:5]]
    assert len({p.tobytes() for p in pixels}) == 5
    with pytest.raises(ValueError, match="pretrain_style"):
        generate_synthetic_dataset(tmp_path / "bad", pretrain_style="crops", **SMALL)


def _pretrain_argv(scene_crops, out, test_dataset="tiny_recipe_val"):
    spec = f"name=tiny_recipe_val,format=lvis,json={scene_crops}/val.json,images={scene_crops}"
    argv = ["--config-file", os.path.join(REPO_ROOT, "configs/pretraining/tiny_synthetic.yaml")]
    argv += ["--register-dataset", spec, "OUTPUT_DIR", str(out)]
    argv += ["MODEL.OVD.ROVIT.CAPTION_FILES", os.path.join(scene_crops, "captions.jsonl")]
    argv += ["MODEL.OVD.ROVIT.IMAGE_ROOT", scene_crops, "MODEL.OVD.CUSTOM_DATASETS", "[]"]
    argv += ["DATASETS.TEST", f"('{test_dataset}',)", "TEST.EVAL_PERIOD", "1"]
    argv += ["SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_WORKERS", "0"]
    argv += ["MODEL.OVD.PRETRAIN.LOG_PERIOD", "1"]
    return argument_parser("test").parse_args(argv)


def test_pretrain_rovit_with_the_tiny_synthetic_config_reports_zero_shot(scene_crops, tmp_path):
    out = tmp_path / "out"
    launch(rovit_main, 1, args=(_pretrain_argv(scene_crops, out),))
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in rows if "zero_shot/tiny_recipe_val/all" in r]
    assert [r["iteration"] for r in evals] == [0, 1]  # every iteration (EVAL_PERIOD 1)
    for r in evals:
        assert 0.0 <= r["zero_shot/tiny_recipe_val/all"] <= 100.0
        assert {"zero_shot/tiny_recipe_val/r", "zero_shot/tiny_recipe_val/f"} <= set(r)
    assert any("total_loss" in r for r in rows)
    clip = build_clip_model("ovdet-tiny-vit-avg", str(out / "rovit_clip_final.pt"))
    assert clip.visual.conv1.weight.shape[-1] == 8


def test_focal_logit_bias_and_scale_init_from_config():
    from ovdet_plugin import get_ovdet_cfg

    cfg = get_ovdet_cfg(os.path.join(REPO_ROOT, "configs/pretraining/tiny_synthetic.yaml"))
    cfg.merge_from_list(["MODEL.OVD.ROVIT.LOSS", "focal", "MODEL.OVD.ROVIT.LOGIT_BIAS_INIT", -10.0])
    cfg.merge_from_list(["MODEL.OVD.ROVIT.LOGIT_SCALE_INIT", 10.0])
    model = RegionAwareCLIP(cfg)
    assert float(model.clip.logit_bias) == -10.0
    assert abs(float(model.clip.logit_scale.exp()) - 10.0) < 1e-4
    assert "clip.logit_bias" in dict(model.named_parameters())  # learnable
    cfg.merge_from_list(
        ["MODEL.OVD.ROVIT.LOGIT_BIAS_INIT", 0.0, "MODEL.OVD.ROVIT.LOGIT_SCALE_INIT", 0.0]
    )
    plain = RegionAwareCLIP(cfg)
    assert getattr(plain.clip, "logit_bias", None) is None
    assert abs(float(plain.clip.logit_scale.exp()) - 1 / 0.07) < 1e-3


def test_exported_weights_leave_out_a_training_only_logit_bias(tmp_path):
    from ovdet_plugin import get_ovdet_cfg
    from ovdet_plugin.pretraining.rovit import export_state_dict

    cfg = get_ovdet_cfg(os.path.join(REPO_ROOT, "configs/pretraining/tiny_synthetic.yaml"))
    cfg.merge_from_list(["MODEL.OVD.ROVIT.LOSS", "focal", "MODEL.OVD.ROVIT.LOGIT_BIAS_INIT", -10.0])
    model = RegionAwareCLIP(cfg)
    assert "logit_bias" in model.clip.state_dict()
    state = export_state_dict(model.clip)
    assert "logit_bias" not in state and "logit_scale" in state
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    loaded = build_clip_model("ovdet-tiny-vit-avg", str(path))  # strict: loads again
    assert torch.equal(loaded.visual.conv1.weight, model.clip.visual.conv1.weight)


def test_an_evaluation_dataset_that_cannot_be_loaded_stops_before_training(scene_crops, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyError, match="no_such_val"):
        launch(rovit_main, 1, args=(_pretrain_argv(scene_crops, out, "no_such_val"),))
    assert not (out / "model_final.pth").exists() and not (out / "rovit_clip_final.pt").exists()
    metrics = out / "metrics.json"
    assert not metrics.exists() or not metrics.read_text().strip()  # no iteration ran


def test_a_negative_logit_scale_init_is_refused():
    clip = build_clip_model("ovdet-tiny-vit-avg", "")
    with pytest.raises(ValueError, match="LOGIT_SCALE_INIT must be >= 0"):
        init_logit_scale_and_bias(clip, -1.0, 0.0)
