"""Shared test fixtures. Everything runs on the CPU with tiny, randomly initialised models."""

import os

import pytest
import torch

# Never touch a model hub from the tests: an offline hub fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tiny_clip():
    """(model, tokenizer) of the plugin's tiny ViT CLIP, seeded random weights."""
    from ovdet_plugin.clip import build_clip_model, get_clip_tokenizer

    torch.manual_seed(0)
    return build_clip_model("ovdet-tiny-vit"), get_clip_tokenizer("ovdet-tiny-vit")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own text-embedding cache folder (never the user's ~/.cache)."""
    monkeypatch.setenv("OVDET_CACHE", str(tmp_path / "ovdet_cache"))


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP threads competing with other
    processes slow small training loops down by an order of magnitude."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
