"""Text classifiers: the prompt-ensemble recipe, the on-disk cache (keys, atomic writes, corrupt
files) and precomputed embedding files."""

import logging
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg

import ovdet_plugin
from ovdet_plugin.clip import text_embeddings as te
from ovdet_plugin.clip.prompts import build_prompts
from ovdet_plugin.vocabulary import Vocabulary, load_vocabulary

VOCAB = "cat, remote_control, sofa"


def _manual_embedding(model, tokenizer, names, prompt_set):
    """Direct computation of methods §1.2: normalise each prompt, average, renormalise."""
    rows = []
    with torch.no_grad():
        for name in names:
            emb = F.normalize(model.encode_text(tokenizer(build_prompts(name, prompt_set))), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(rows)


@pytest.mark.parametrize("prompt_set", ["vild", "clip"])
def test_prompt_ensemble_recipe(tiny_clip, prompt_set):
    model, tokenizer = tiny_clip
    got = te.encode_vocabulary(model, tokenizer, VOCAB, prompts=prompt_set, batch_size=50)
    want = _manual_embedding(model, tokenizer, ["cat", "remote control", "sofa"], prompt_set)
    assert got.shape == (3, 64) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(3))


def test_batch_size_does_not_change_the_result(tiny_clip):
    model, tokenizer = tiny_clip
    a = te.encode_vocabulary(model, tokenizer, VOCAB, batch_size=7)
    b = te.encode_vocabulary(model, tokenizer, VOCAB, batch_size=1000)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_synonym_averaging(tiny_clip):
    model, tokenizer = tiny_clip
    vocab = Vocabulary.from_names(["sofa", "cat"], synonyms=[["sofa", "couch"], ["cat"]])
    plain = te.encode_vocabulary(model, tokenizer, vocab, prompts="single")
    averaged = te.encode_vocabulary(
        model, tokenizer, vocab, prompts="single", average_synonyms=True
    )
    with torch.no_grad():
        both = F.normalize(
            model.encode_text(tokenizer(["a photo of a sofa.", "a photo of a couch."])), dim=-1
        )
    torch.testing.assert_close(averaged[0], F.normalize(both.mean(0), dim=0), atol=1e-5, rtol=0)
    torch.testing.assert_close(averaged[1], plain[1])  # no synonyms: unchanged
    assert not torch.allclose(averaged[0], plain[0])


def test_progress_bar_for_large_vocabularies(tiny_clip, capsys):
    model, tokenizer = tiny_clip
    te.encode_vocabulary(model, tokenizer, VOCAB, prompts="vild", batch_size=10)
    assert "text embeddings" in capsys.readouterr().err  # 19 batches: tqdm bar shown
    te.encode_vocabulary(model, tokenizer, VOCAB, prompts="single", batch_size=10)
    assert "text embeddings" not in capsys.readouterr().err


def _cache_files(cache_dir):
    return sorted(f for f in os.listdir(cache_dir) if f.endswith(".pt"))


def test_cache_hit_skips_encoding(tiny_clip, tmp_path, monkeypatch):
    model, tokenizer = tiny_clip
    first = te.get_text_embeddings(model, tokenizer, VOCAB, cache_dir=str(tmp_path))
    assert len(_cache_files(tmp_path)) == 1

    def fail(*args, **kwargs):
        raise AssertionError("encoded again despite a valid cache")

    monkeypatch.setattr(te, "encode_vocabulary", fail)
    again = te.get_text_embeddings(model, tokenizer, VOCAB, cache_dir=str(tmp_path))
    assert torch.equal(first, again)


def test_default_cache_dir_follows_ovdet_cache(tiny_clip, tmp_path, monkeypatch):
    model, tokenizer = tiny_clip
    monkeypatch.setenv("OVDET_CACHE", str(tmp_path / "root"))
    te.get_text_embeddings(model, tokenizer, VOCAB, prompts="single")
    assert len(_cache_files(tmp_path / "root" / "text_embeddings")) == 1


def test_cache_key_covers_model_weights_prompts_and_names(tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    d = str(tmp_path)
    te.get_text_embeddings(model, tokenizer, VOCAB, prompts="single", cache_dir=d)
    te.get_text_embeddings(model, tokenizer, VOCAB, prompts="clip", cache_dir=d)
    te.get_text_embeddings(model, tokenizer, "cat, sofa", prompts="single", cache_dir=d)
    te.get_text_embeddings(
        model, tokenizer, VOCAB, prompts="single", single_prompt="{}", cache_dir=d
    )
    assert len(_cache_files(d)) == 4
    other = ovdet_plugin.clip.build_clip_model("ovdet-tiny-vit")  # other random weights
    emb = te.get_text_embeddings(other, tokenizer, VOCAB, prompts="single", cache_dir=d)
    assert len(_cache_files(d)) == 5
    torch.testing.assert_close(emb, te.encode_vocabulary(other, tokenizer, VOCAB, prompts="single"))


def _corrupt(path, how):
    data = open(path, "rb").read()
    if how == "truncated":
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "garbage":
        open(path, "wb").write(b"\x00garbage" * 10)
    elif how == "tampered":  # valid file, embeddings changed behind the checksum's back
        blob = torch.load(path, weights_only=True)
        blob["embeddings"] = blob["embeddings"] * 2
        torch.save(blob, path)


@pytest.mark.parametrize("how", ["truncated", "garbage", "tampered"])
def test_corrupt_cache_is_rebuilt(tiny_clip, tmp_path, how, caplog):
    model, tokenizer = tiny_clip
    good = te.get_text_embeddings(
        model, tokenizer, VOCAB, prompts="single", cache_dir=str(tmp_path)
    )
    (name,) = _cache_files(tmp_path)
    _corrupt(tmp_path / name, how)
    with caplog.at_level(logging.WARNING, logger="ovdet_plugin.clip.text_embeddings"):
        again = te.get_text_embeddings(
            model, tokenizer, VOCAB, prompts="single", cache_dir=str(tmp_path)
        )
    assert torch.equal(good, again)
    assert "is invalid" in caplog.text and "rebuilding" in caplog.text
    blob = torch.load(tmp_path / name, weights_only=True)  # rewritten, valid again
    assert torch.equal(blob["embeddings"], good)


def test_cache_write_is_atomic(tiny_clip, tmp_path, monkeypatch):
    """A crash while writing leaves neither a partial cache file nor a temporary file."""
    model, tokenizer = tiny_clip

    def crash(obj, path):
        open(path, "wb").write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        te.get_text_embeddings(model, tokenizer, VOCAB, prompts="single", cache_dir=str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_embeddings_file_roundtrip_and_checks(tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    vocab = load_vocabulary(VOCAB)
    emb = te.encode_vocabulary(model, tokenizer, vocab, prompts="single")
    pt, npy = str(tmp_path / "e.pt"), str(tmp_path / "e.npy")
    te.save_embeddings_file(pt, emb, vocab, model="ovdet-tiny-vit")
    te.save_embeddings_file(npy, emb, vocab)
    for path in (pt, npy):
        torch.testing.assert_close(te.load_embeddings_file(path, vocab, embed_dim=64), emb)
    with pytest.raises(ValueError, match=r"shape \(3, 64\) but the vocabulary .* has 2 classes"):
        te.load_embeddings_file(npy, "cat, dog")
    with pytest.raises(ValueError, match="embedding width 64 but the model expects 512"):
        te.load_embeddings_file(npy, vocab, embed_dim=512)
    with pytest.raises(ValueError, match="other class names"):
        te.load_embeddings_file(pt, "cat, remote_control, couch")
    with pytest.raises(FileNotFoundError, match="dump_text_embeddings"):
        te.load_embeddings_file(str(tmp_path / "missing.npy"), vocab)


def test_embeddings_file_in_vild_layout(tmp_path):
    """ViLD's released classifier is stored (D, K); it is transposed and normalised."""
    kernel = np.random.RandomState(0).randn(512, 3).astype(np.float32) * 5
    path = str(tmp_path / "vild.npy")
    np.save(path, kernel)
    got = te.load_embeddings_file(path, VOCAB, embed_dim=512)
    torch.testing.assert_close(got, F.normalize(torch.from_numpy(kernel).t(), dim=1))


def test_unreadable_embeddings_file(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"nope")
    with pytest.raises(ValueError, match="Cannot read text-embedding file"):
        te.load_embeddings_file(str(path), VOCAB)


def test_text_embeddings_from_config(tmp_path):
    cfg = ovdet_plugin.add_ovdet_config(get_cfg())
    cfg.MODEL.OVD.CLIP.MODEL_NAME = "ovdet-tiny-vit"
    cfg.MODEL.OVD.TEXT.PROMPTS = "single"
    cfg.MODEL.OVD.TEXT.CACHE_DIR = str(tmp_path / "cache")
    torch.manual_seed(0)
    emb = te.text_embeddings_from_config(cfg, VOCAB, embed_dim=64)
    # random weights (no PRETRAINED) are never cached: every build would add a file
    cache = tmp_path / "cache"
    assert emb.shape == (3, 64) and (not cache.exists() or not _cache_files(cache))
    weights = str(tmp_path / "tiny.pt")
    torch.manual_seed(0)
    torch.save(ovdet_plugin.clip.build_clip_model("ovdet-tiny-vit").state_dict(), weights)
    cfg.MODEL.OVD.CLIP.PRETRAINED = weights
    loaded = te.text_embeddings_from_config(cfg, VOCAB, embed_dim=64)
    torch.testing.assert_close(loaded, emb)  # the same weights, loaded from the file
    assert len(_cache_files(tmp_path / "cache")) == 1  # loaded weights are cached
    with pytest.raises(
        ValueError, match="gives 64-d text embeddings but the detector head expects 512"
    ):
        te.text_embeddings_from_config(cfg, VOCAB, embed_dim=512)
    path = str(tmp_path / "file.pt")
    te.save_embeddings_file(path, emb, load_vocabulary(VOCAB))
    cfg.MODEL.OVD.TEXT.EMBEDDINGS_FILE = path
    torch.testing.assert_close(te.text_embeddings_from_config(cfg, VOCAB), emb)


def test_square_file_stored_transposed_is_read_by_its_unit_columns(tmp_path):
    """A (K, D) file with K == D is ambiguous by shape: unit columns and non-unit rows mean it was
    stored as (D, K), and it is read transposed (as non-square (D, K) files are)."""
    names = ", ".join(f"class {i}" for i in range(8))
    rows = F.normalize(torch.randn(8, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    path = str(tmp_path / "square.npy")
    np.save(path, rows.t().numpy())  # stored transposed
    torch.testing.assert_close(te.load_embeddings_file(path, names, embed_dim=8), rows)
    np.save(path, rows.numpy())  # stored as (K, D): read as stored
    torch.testing.assert_close(te.load_embeddings_file(path, names, embed_dim=8), rows)


def test_names_equal_within_the_token_context_are_refused(tiny_clip):
    model, tokenizer = tiny_clip
    long = " ".join(["word"] * 90)  # more than CLIP's 77 tokens
    vocab = f"{long} alpha, {long} beta, cat"
    with pytest.raises(ValueError, match="identical CLIP embeddings.*77-token context"):
        te.encode_vocabulary(model, tokenizer, vocab, prompts="single")
