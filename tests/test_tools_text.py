"""The text tools: tools/dump_text_embeddings.py and the demo behind `make demo`."""

import os
import subprocess
import sys

import torch
from conftest import REPO_ROOT

from ovdet_plugin.clip.text_embeddings import load_embeddings_file


def _tool(name, *args, env_extra=None):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, **(env_extra or {}))
    return subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_dump_text_embeddings_writes_a_loadable_file(tmp_path):
    out = str(tmp_path / "vocab.pt")
    result = _tool(
        "dump_text_embeddings.py",
        "--vocabulary", "cat, remote control, sofa",
        "--model", "ovdet-tiny-vit",
        "--prompts", "clip",
        "--output", out,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    emb = load_embeddings_file(out, "cat, remote control, sofa", embed_dim=64)
    assert emb.shape == (3, 64)
    blob = torch.load(out, weights_only=True)
    assert (
        blob["splits"] == ["novel", "novel", "novel"] and '"prompts": "clip"' in blob["info_json"]
    )


def test_dump_text_embeddings_rejects_bad_vocabulary(tmp_path):
    result = _tool(
        "dump_text_embeddings.py", "--vocabulary", "cat, cat", "--output", str(tmp_path / "x.npy")
    )
    assert result.returncode != 0 and "Duplicate class names" in result.stderr


def test_demo_text_runs_and_uses_the_cache(tmp_path):
    result = _tool(
        "demo_text.py",
        "--vocabulary", "cat, remote control, sofa",
        "--queries", "a remote, couch",
        env_extra={"OVDET_CACHE": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Text classifier (3, 64): first call" in result.stdout
    assert "'a remote' ->" in result.stdout and "'couch' ->" in result.stdout
    assert len(os.listdir(tmp_path / "text_embeddings")) == 1
