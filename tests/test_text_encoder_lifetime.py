"""The text encoder's lifetime: the detector never holds a text tower (not in ``state_dict``, not
moved with the model, not copied with it); the build's encoder and its CLIP are dropped when the
build returns, unless the build runs inside ``keep_text_encoder()``, which hands the encoder to
a later vocabulary swap (``tools/demo.py --vocabulary``) so that no second CLIP is built; a swap
gives the embeddings a fresh encode gives."""

import gc
import logging
import os
import weakref

import pytest
import torch
from conftest import REPO_ROOT, load_test_config
from detectron2.modeling import build_model

import ovdet_plugin
from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer
from ovdet_plugin.clip import text_embeddings as text_module
from ovdet_plugin.clip.text_embeddings import VocabularyEncoder, encode_vocabulary
from ovdet_plugin.modeling.roi_heads.ov_predictor import TextClassifier

SHIPPED_CLIP = os.path.join(REPO_ROOT, "benchmarks", "checkpoints", "tiny_clip_synthetic.pt")
PRETRAINED = ("MODEL.OVD.CLIP.MODEL_NAME", "ovdet-tiny-vit-avg", "MODEL.OVD.CLIP.PRETRAINED")
TEXT_TOWER_KEYS = ("token_embedding", "text_projection", "ln_final", "transformer.resblocks")


@pytest.fixture
def text_clips(monkeypatch):
    """Weak references to every CLIP the text side builds (the backbone's are not counted)."""
    built = []

    def counting_build(*args, **kwargs):
        model = build_clip_model(*args, **kwargs)
        built.append(weakref.ref(model))
        return model

    monkeypatch.setattr(text_module, "build_clip_model", counting_build)
    return built


def _build(name, *opts):
    torch.manual_seed(0)
    cfg = load_test_config(name, *opts)
    return build_model(cfg), cfg


def _held_objects(module):
    """Everything the modules keep as plain attributes (not parameters, buffers, submodules),
    one level into lists, tuples and dicts."""
    for m in module.modules():
        for key, value in vars(m).items():
            if key.startswith("_"):
                continue  # _parameters, _buffers, _modules, hooks
            yield value
            if isinstance(value, (list, tuple)):
                yield from value
            elif isinstance(value, dict):
                yield from value.values()


@pytest.mark.parametrize("name", ["tiny_fvlm", "tiny_vild"])
def test_the_model_holds_no_text_tower(name, text_clips):
    model, _ = _build(name)
    classifiers = [m for m in model.modules() if isinstance(m, TextClassifier)]
    assert classifiers
    held = list(_held_objects(model))
    assert not [v for v in held if isinstance(v, VocabularyEncoder)]
    for clf in classifiers:
        assert not [v for v in _held_objects(clf) if isinstance(v, torch.nn.Module)]
        keys = list(clf.state_dict()) + [n for n, _ in clf.named_parameters()]
        assert not [k for k in keys if any(t in k for t in TEXT_TOWER_KEYS)], keys
    # and the text CLIP of the build is gone once the build has returned
    assert text_clips, "the build encoded nothing with CLIP"
    gc.collect()
    assert all(ref() is None for ref in text_clips)


def test_a_swap_reuses_the_kept_encoder_and_matches_a_fresh_encode(text_clips):
    opts = (*PRETRAINED, SHIPPED_CLIP)
    with ovdet_plugin.keep_text_encoder() as kept:
        model, cfg = _build("tiny_vild", *opts)
    assert isinstance(kept.encoder, VocabularyEncoder) and len(text_clips) == 1
    model.eval()
    ovdet_plugin.set_vocabulary(model, "cat, sofa, traffic light", cfg, encoder=kept.encoder)
    assert len(text_clips) == 1  # the build's text tower, no second CLIP
    # a fresh encode: a new CLIP from the same checkpoint, no cache
    fresh = encode_vocabulary(
        build_clip_model("ovdet-tiny-vit-avg", SHIPPED_CLIP),
        get_clip_tokenizer("ovdet-tiny-vit-avg"),
        "cat, sofa, traffic light",
        prompts=cfg.MODEL.OVD.TEXT.PROMPTS,
        show_progress=False,
    )
    clf = model.roi_heads.box_predictor.text_classifier
    assert clf.test_vocabulary.names == ("cat", "sofa", "traffic light")
    torch.testing.assert_close(clf.test_embeddings, fresh, rtol=0, atol=1e-6)
    kept.release()
    gc.collect()
    assert text_clips[0]() is None  # released: nothing else held the text tower


def test_random_weights_swap_with_the_builds_tower(text_clips, caplog):
    """Random weights differ on every build: only the kept encoder encodes in the build's text
    space; a swap from the config alone says so."""
    with ovdet_plugin.keep_text_encoder() as kept:
        model, cfg = _build("tiny_vild")
    model.eval()
    ovdet_plugin.set_vocabulary(model, "cat, sofa", cfg, encoder=kept.encoder)
    tower, tokenizer = kept.encoder._clip()
    expected = encode_vocabulary(
        tower, tokenizer, "cat, sofa", prompts=cfg.MODEL.OVD.TEXT.PROMPTS, show_progress=False
    )
    clf = model.roi_heads.box_predictor.text_classifier
    torch.testing.assert_close(clf.test_embeddings, expected, rtol=0, atol=1e-6)
    with caplog.at_level(logging.WARNING):
        ovdet_plugin.set_vocabulary(model, "cat, sofa", cfg)
    assert "randomly initialised CLIP, not the build's" in caplog.text
    assert len(text_clips) == 2


def test_without_keep_nothing_is_kept_and_a_swap_needs_the_cfg():
    with ovdet_plugin.keep_text_encoder(enabled=False) as kept:
        model, _ = _build("tiny_vild")
    assert kept.encoder is None
    with pytest.raises(ValueError, match="needs the model's cfg"):
        ovdet_plugin.set_vocabulary(model, "cat, sofa")
