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


def load_test_config(name: str, *opts, **overrides):
    """A config from configs/test/ (``name`` with or without ".yaml") with the ovdet keys, then
    ``KEY VALUE`` overrides given positionally and/or as keyword arguments."""
    from ovdet_plugin import get_ovdet_cfg

    name = name if name.endswith(".yaml") else name + ".yaml"
    flat = list(opts) + [x for kv in overrides.items() for x in kv]
    return get_ovdet_cfg(os.path.join(REPO_ROOT, "configs", "test", name), flat)


def randomize_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Random BN affine parameters and running statistics (CLIP init zeroes bn3 weights)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(1.0 + 0.3 * torch.randn(n, generator=g))
                m.bias.copy_(0.2 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


def detection_batch(h: int = 75, w: int = 101):
    """One seeded random image (non-square, odd-sized by default) with two boxes of classes 0 and
    2, in Detectron2's model input format."""
    from detectron2.structures import Boxes, Instances

    torch.manual_seed(0)
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor([[5.0, 5.0, 40.0, 50.0], [30.0, 20.0, 90.0, 70.0]]))
    inst.gt_classes = torch.tensor([0, 2])
    image = torch.randint(0, 256, (3, h, w)).float()
    return [{"image": image, "instances": inst, "height": h, "width": w}]
