"""Open-vocabulary ROI heads inside full Detectron2 models built from the tiny configs: training
(losses fall over 20 iterations on a generated batch), ViLD distillation inputs, test-time
fusion, and vocabularies swapped after building."""

import math

import pytest
import torch
from conftest import load_test_config
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import ovdet_plugin
from ovdet_plugin.modeling.roi_heads import OVROIHeads, ViLDROIHeads

H, W = 128, 160


def build(name, *opts, seed=0):
    torch.manual_seed(seed)
    cfg = load_test_config(name, *opts)
    return build_model(cfg), cfg


def batch(with_distillation=False, seed=0, teacher=None):
    """Two generated images with boxes of base COCO classes (person=0, car=2). With
    ``with_distillation``, each box and a shifted copy get a teacher embedding: rows of
    ``teacher`` (e.g. the class text embeddings, as a CLIP teacher would give) or random ones."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(2):
        image = torch.rand(3, H, W, generator=g) * 60
        boxes = torch.tensor([[10.0, 12, 60, 80], [70, 20, 150, 110]]) + i * 4
        for (x0, y0, x1, y1), value in zip(boxes.int().tolist(), (220.0, 120.0)):
            image[:, y0:y1, x0:x1] = value  # bright rectangles: easy objects
        inst = Instances((H, W), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([0, 2]))
        item = {"image": image, "instances": inst, "height": H, "width": W}
        if with_distillation:
            vp = Instances((H, W), proposal_boxes=Boxes(torch.cat([boxes, boxes + 3])))
            vp.clip_embeds = (
                teacher[torch.tensor([0, 2, 0, 2])] if teacher is not None
                else torch.randn(4, 64, generator=g)
            )  # fmt: skip
            item["vild_proposals"] = vp
        out.append(item)
    return out


def train(model, data, iters=20, lr=0.01):
    """SGD with gradient clipping (Detectron2's SOLVER.CLIP_GRADIENTS) on a fixed batch."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    history = []
    with EventStorage():
        for _ in range(iters):
            losses = model(data)
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            history.append({k: v.item() for k, v in losses.items()})
    return history


def mean_of(history, key):
    return sum(h[key] for h in history) / len(history)


@pytest.mark.parametrize(
    "name,distill",
    [
        ("tiny_vild", True),
        ("tiny_vild_ensemble", True),
        ("tiny_fvlm", False),
        ("tiny_fvit", False),
        ("tiny_rovit", False),
    ],
)
def test_tiny_configs_train_and_loss_falls(name, distill):
    model, _ = build(name)
    teacher = model.roi_heads.text_classifier.train_embeddings
    history = train(model, batch(with_distillation=distill, teacher=teacher))
    first, last = history[:3], history[-3:]
    # The box loss can rise while the RPN improves (more foreground RoIs get sampled), so the
    # classification and distillation losses are the ones watched.
    assert mean_of(last, "loss_cls") < 0.9 * mean_of(first, "loss_cls"), history
    assert mean_of(last, "loss_rpn_cls") < mean_of(first, "loss_rpn_cls")
    if distill:
        assert mean_of(last, "loss_vild_image") < 0.9 * mean_of(first, "loss_vild_image")
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch()[0]["image"], "height": H, "width": W}])
    inst = out[0]["instances"]
    assert len(inst) > 0 and int(inst.pred_classes.max()) < 80


def test_num_classes_follows_the_vocabulary():
    model, cfg = build("tiny_vild")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 3  # the YAML says 3 ...
    assert model.roi_heads.num_classes == 80  # ... the vocabulary (COCO) wins
    assert isinstance(model.roi_heads, ViLDROIHeads)


def test_vild_without_distillation_inputs_trains_text_only():
    model, _ = build("tiny_vild")
    with EventStorage():
        losses = model(batch(with_distillation=False))
    assert "loss_vild_image" not in losses and "loss_cls" in losses


def test_vild_text_weight_scales_the_text_loss_only():
    """TEXT_WEIGHT 0 (ViLD-image alone): no classification loss, distillation and boxes stay."""
    losses = {}
    for weight in ("1.0", "0.0"):
        model, _ = build("tiny_vild", "MODEL.OVD.VILD.TEXT_WEIGHT", weight)
        with EventStorage():
            losses[weight] = {k: v.item() for k, v in model(batch(with_distillation=True)).items()}
    assert losses["1.0"]["loss_cls"] > 0 and losses["0.0"]["loss_cls"] == 0.0
    for key in ("loss_vild_image", "loss_box_reg"):
        assert losses["0.0"][key] == pytest.approx(losses["1.0"][key])


def test_vild_frozen_text_classifier_gets_no_gradient():
    model, _ = build("tiny_vild")
    with EventStorage():
        sum(model(batch(with_distillation=True)).values()).backward()
    clf = model.roi_heads.text_classifier
    assert not clf.train_embeddings.requires_grad and clf.bg_embedding.grad is not None


def test_swap_vocabulary_after_building():
    model, cfg = build("tiny_fvlm")
    model.eval()
    vocab = ovdet_plugin.set_vocabulary(model, "cat, remote control, sofa", cfg)
    assert len(vocab) == 3 and vocab.splits == ("novel",) * 3
    with torch.no_grad():
        out = model([{"image": batch()[0]["image"], "height": H, "width": W}])
    inst = out[0]["instances"]
    assert len(inst) > 0 and set(inst.pred_classes.tolist()) <= {0, 1, 2}
    model.train()  # training still uses the training vocabulary
    assert model.roi_heads.text_classifier.num_classes == 80


def test_test_vocabulary_from_config():
    model, _ = build("tiny_vild", "MODEL.OVD.TEST_VOCABULARY", "cat, dog")
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch()[0]["image"], "height": H, "width": W}])
    assert set(out[0]["instances"].pred_classes.tolist()) <= {0, 1}


def test_vocabulary_with_another_embedding_width_fails_clearly():
    model, _ = build("tiny_vild")
    with pytest.raises(ValueError, match="another width"):
        ovdet_plugin.set_vocabulary(model, "cat, dog", text_embeddings=torch.randn(2, 512))
    with pytest.raises(ValueError, match="2 text embeddings for 3 classes"):
        ovdet_plugin.set_vocabulary(model, "cat, dog, sofa", text_embeddings=torch.randn(2, 64))


def test_set_vocabulary_on_a_closed_vocabulary_model():
    model, cfg = build("tiny_rcnn")
    with pytest.raises(ValueError, match="no open-vocabulary classifier"):
        ovdet_plugin.set_vocabulary(model, "cat", cfg)


def test_checkpoint_loads_with_another_test_vocabulary():
    model, _ = build("tiny_fvlm")
    other, _ = build("tiny_fvlm", "MODEL.OVD.TEST_VOCABULARY", "cat, sofa", seed=1)
    missing, unexpected = other.load_state_dict(model.state_dict(), strict=True), None
    assert unexpected is None and not missing.missing_keys


def test_fusion_changes_scores_and_needs_a_scorer():
    model, _ = build("tiny_fvlm")
    assert isinstance(model.roi_heads, OVROIHeads) and model.roi_heads.vlm_scorer is not None
    model.eval()
    image = {"image": batch()[0]["image"], "height": H, "width": W}
    with torch.no_grad():
        fused = model([image])[0]["instances"].scores
        model.roi_heads.fusion_rule = ""
        plain = model([image])[0]["instances"].scores
    assert not torch.allclose(fused.sort().values[:5], plain.sort().values[:5])
    with pytest.raises(ValueError, match="needs a VLM scorer"):
        build("tiny_fvlm", "MODEL.OVD.VLM_SCORER.NAME", "")


def test_class_specific_masks_are_refused():
    with pytest.raises(ValueError, match="CLS_AGNOSTIC_MASK True"):
        build("tiny_vild", "MODEL.MASK_ON", "True")


def test_a_fusion_rule_registered_outside_the_package_is_used():
    from ovdet_plugin.modeling.roi_heads.fusion import FUSION_RULE_REGISTRY

    seen = {}

    @FUSION_RULE_REGISTRY.register()
    def test_detector_only_rule(det_log_probs, vlm_logits, base_mask, alpha, beta):
        seen["shapes"] = (det_log_probs.shape, vlm_logits.shape, base_mask.shape, alpha, beta)
        return det_log_probs.exp()

    try:
        model, _ = build("tiny_fvlm", "MODEL.OVD.FUSION.RULE", "test_detector_only_rule")
        model.eval()
        image = {"image": batch()[0]["image"], "height": H, "width": W}
        with torch.no_grad():
            custom = model([image])[0]["instances"].scores
            model.roi_heads.fusion_rule = ""  # detector only: the same scores
            plain = model([image])[0]["instances"].scores
        det, vlm, base, alpha, beta = seen["shapes"]
        assert det == vlm and base == (det[1] - 1,) and (alpha, beta) == (0.35, 0.65)
        torch.testing.assert_close(custom, plain)
    finally:
        FUSION_RULE_REGISTRY._obj_map.pop("test_detector_only_rule")


@pytest.mark.parametrize(
    "opts, message",
    [
        (("MODEL.OVD.FUSION.RULE", "fvml"), "Unknown fusion rule 'fvml'"),
        (("MODEL.OVD.FUSION.ALPHA", "1.5"), "FUSION.ALPHA=1.5 .* must lie in \\[0, 1\\]"),
        (("MODEL.OVD.FUSION.BETA", "-0.1"), "FUSION.BETA=-0.1"),
        (("MODEL.OVD.FUSION.VLM_TEMPERATURE", "-1.0"), "VLM_TEMPERATURE=-1.0 must be > 0"),
        (("MODEL.OVD.FUSION.OBJECTNESS_WEIGHT", "-1.0"), "OBJECTNESS_WEIGHT=-1.0 must be >= 0"),
    ],
)
def test_bad_fusion_settings_fail_when_the_model_is_built(opts, message):
    with pytest.raises(ValueError, match=message):
        build("tiny_fvlm", *opts)


def test_vlm_temperature_zero_is_the_clips_own_logit_scale(tmp_path):
    """VLM_TEMPERATURE 0 reads exp(logit_scale) of the loaded CLIP checkpoint; a scorer without
    a CLIP tower (ViLD's image branch) cannot give one and says so."""
    from ovdet_plugin.clip import build_clip_model

    model, cfg = build("tiny_fvlm")
    clip = build_clip_model(cfg.MODEL.OVD.CLIP.MODEL_NAME)
    with torch.no_grad():
        clip.logit_scale.fill_(math.log(17.5))
    path = tmp_path / "clip.pt"
    torch.save(clip.state_dict(), path)
    opts = ["MODEL.OVD.CLIP.PRETRAINED", str(path)]
    fixed, _ = build("tiny_fvlm", *opts)
    assert fixed.roi_heads.vlm_temperature == cfg.MODEL.OVD.FUSION.VLM_TEMPERATURE != 17.5
    own, _ = build("tiny_fvlm", *opts, "MODEL.OVD.FUSION.VLM_TEMPERATURE", "0.0")
    assert own.roi_heads.vlm_temperature == pytest.approx(17.5, rel=1e-5)
    with pytest.raises(ValueError, match="VLM_TEMPERATURE 0 means the CLIP's own logit scale"):
        build("tiny_vild_ensemble", "MODEL.OVD.FUSION.VLM_TEMPERATURE", "0.0")


def test_old_vild_ensemble_keys_name_their_replacement():
    with pytest.raises(KeyError, match="VILD.ENSEMBLE was renamed to MODEL.OVD.VLM_SCORER.NAME"):
        build("tiny_vild", "MODEL.OVD.VILD.ENSEMBLE", "True")


def test_vocabularies_are_resolved_once_and_swaps_reuse_the_text_tower(monkeypatch):
    """The build resolves MODEL.OVD.*_VOCABULARY once and hands the pair to the predictor; a
    swap encodes with the build's text encoder (kept by keep_text_encoder), so no second CLIP
    is built."""
    from ovdet_plugin.clip import text_embeddings
    from ovdet_plugin.modeling.roi_heads import ov_predictor
    from ovdet_plugin.modeling.vocabulary_swap import get_test_vocabulary

    loads, clips = [], []
    load, build_clip = ov_predictor.load_vocabulary, text_embeddings.build_clip_model
    monkeypatch.setattr(ov_predictor, "load_vocabulary", lambda s: loads.append(s) or load(s))
    monkeypatch.setattr(
        text_embeddings, "build_clip_model", lambda *a: clips.append(a) or build_clip(*a)
    )
    with ovdet_plugin.keep_text_encoder() as kept:
        model, cfg = build("tiny_fvlm")
    assert loads == ["coco"] and len(clips) == 1  # train vocabulary once; one text tower
    clf = model.roi_heads.text_classifier
    assert get_test_vocabulary(model) is clf.train_vocabulary and len(clf.train_vocabulary) == 80
    vocab = ovdet_plugin.set_vocabulary(
        model, "cat, remote control, sofa", cfg, encoder=kept.encoder
    )
    assert len(clips) == 1 and get_test_vocabulary(model) is vocab
    assert clf.test_base_mask.tolist() == [False] * 3


def test_vocabulary_module_does_not_import_the_data_package():
    """No import loop: ``ovdet_plugin.data`` imports ``vocabulary``, never the reverse."""
    import ast
    import inspect

    import ovdet_plugin.vocabulary as vocabulary_module

    tree = ast.parse(inspect.getsource(vocabulary_module))
    imported = [
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert not [m for m in imported if m == "data" or m.startswith("data.")], imported
