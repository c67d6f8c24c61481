"""CLIP loading: architectures by name, local checkpoints (open_clip state dicts and OpenAI
TorchScript archives), and the errors for unknown names, missing files, unreachable hubs and
checkpoints that do not fit the architecture."""

import logging

import pytest
import torch

from ovdet_plugin.clip import (
    build_clip_model,
    clip_embed_dim,
    get_clip_tokenizer,
    text_weights_checksum,
)


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", ["ovdet-tiny-vit", "ovdet-tiny-rn"])
def test_tiny_models_build_and_encode(name):
    model = build_clip_model(name)
    tokenizer = get_clip_tokenizer(name)
    assert not model.training
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    with torch.no_grad():
        image = model.encode_image(torch.randn(2, 3, size, size))
        text = model.encode_text(tokenizer(["a cat", "a remote control"]))
    assert image.shape == text.shape == (2, clip_embed_dim(model)) == (2, 64)


def test_standard_architecture_builds_offline():
    model = build_clip_model("RN50")  # architecture only, random weights
    assert clip_embed_dim(model) == 1024


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"Unknown CLIP model name 'ViT-B-33'.*'ViT-B-32'"):
        build_clip_model("ViT-B-33")
    with pytest.raises(ValueError, match="ovdet-tiny-vit"):
        get_clip_tokenizer("ovdet-tiny-vt")


def test_missing_weight_file_says_to_pass_a_local_file(tmp_path):
    missing = str(tmp_path / "ViT-B-32.pt")
    with pytest.raises(FileNotFoundError, match="not found.*existing local checkpoint"):
        build_clip_model("ovdet-tiny-vit", missing)


def test_unknown_pretrained_tag_lists_known_tags():
    with pytest.raises(ValueError, match=r"Unknown pretrained tag 'opneai'.*'openai'"):
        build_clip_model("RN50", "opneai")


def test_unreachable_hub_says_to_pass_a_local_file(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        RuntimeError, match="Could not fetch pretrained weights 'openai'.*local path"
    ):
        build_clip_model("RN50", "openai")


def test_open_clip_state_dict_roundtrip(tmp_path):
    torch.manual_seed(1)
    source = build_clip_model("ovdet-tiny-vit")
    plain, wrapped = tmp_path / "plain.pt", tmp_path / "wrapped.pt"
    torch.save(source.state_dict(), plain)
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}},
        wrapped,
    )
    for path in (plain, wrapped):
        torch.manual_seed(2)
        loaded = build_clip_model("ovdet-tiny-vit", str(path))
        assert _same_weights(source, loaded)
        assert loaded.ovdet_pretrained == str(path)


def test_openai_torchscript_archive(tmp_path):
    """OpenAI's released .pt files are TorchScript archives; they load like state dicts."""
    torch.manual_seed(3)
    source = build_clip_model("ovdet-tiny-vit")
    tokens = get_clip_tokenizer("ovdet-tiny-vit")(["a cat"])
    traced = torch.jit.trace(
        source, (torch.randn(1, 3, 64, 64), tokens), strict=False, check_trace=False
    )
    path = tmp_path / "openai_style.pt"
    traced.save(str(path))
    loaded = build_clip_model("ovdet-tiny-vit", str(path))
    assert _same_weights(source, loaded)


def test_checkpoint_of_another_architecture_lists_keys(tmp_path):
    path = tmp_path / "rn.pt"
    torch.save(build_clip_model("ovdet-tiny-rn").state_dict(), path)
    with pytest.raises(RuntimeError, match=r"does not match architecture.*first: \[") as err:
        build_clip_model("ovdet-tiny-vit", str(path))
    assert "missing keys" in str(err.value) and "unexpected keys" in str(err.value)


def test_corrupt_checkpoint_is_reported(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match="Could not load CLIP checkpoint"):
        build_clip_model("ovdet-tiny-vit", str(path))


def test_text_checksum_tracks_weight_changes():
    torch.manual_seed(4)
    model = build_clip_model("ovdet-tiny-vit")
    first = text_weights_checksum(model)
    assert text_weights_checksum(model) == first
    with torch.no_grad():
        model.visual.conv1.weight.add_(1.0)  # the image tower does not count
    assert text_weights_checksum(model) == first
    with torch.no_grad():
        model.ln_final.bias.add_(1e-3)
    assert text_weights_checksum(model) != first


def test_clip_image_size_reads_int_and_pair(tiny_clip):
    from torch import nn

    from ovdet_plugin.clip import clip_image_size

    model, _ = tiny_clip
    assert clip_image_size(model) == clip_image_size(model.visual) == (64, 64)
    tower = nn.Module()
    tower.image_size = (96, 128)
    assert clip_image_size(tower) == (96, 128)


class _Records(logging.Handler):
    """Messages of the records it sees, each record once (it may sit on a logger and on one of
    that logger's ancestors)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages, self._records = [], []

    def emit(self, record):
        if not any(r is record for r in self._records):
            self._records.append(record)
            self.messages.append(record.getMessage())


def _capture(*loggers):
    handler = _Records()
    for lg in loggers:
        lg.addHandler(handler)
    return handler


def test_one_honest_line_per_loaded_checkpoint(tmp_path):
    """A checkpoint load says which file (and its SHA-256 prefix) and never "initialized
    randomly"; random weights say so once, in the plugin's words."""
    from ovdet_plugin.utils.hashing import file_sha256

    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.save(build_clip_model("ovdet-tiny-vit").state_dict(), path)
    root, ours = logging.getLogger(), logging.getLogger("ovdet_plugin.clip.loading")
    handler = _capture(root, ours)
    level = ours.level
    ours.setLevel(logging.DEBUG)
    try:
        build_clip_model("ovdet-tiny-vit", str(path))
        build_clip_model("ovdet-tiny-vit", str(path))  # e.g. the backbone, then the scorer
        loaded = list(handler.messages)
        handler.messages.clear()
        build_clip_model("ovdet-tiny-vit")
        random_init = list(handler.messages)
    finally:
        root.removeHandler(handler)
        ours.removeHandler(handler)
        ours.setLevel(level)
    assert not [m for m in loaded if "initialized randomly" in m], loaded
    expected = f"from {path} (SHA-256 {file_sha256(str(path))[:12]})"
    line = f"Loaded CLIP weights for ovdet-tiny-vit {expected}"
    assert [m for m in loaded if "Loaded CLIP weights" in m] == [line, line]
    assert [r.levelno for r in handler._records if r.getMessage() == line] == [
        logging.INFO,
        logging.DEBUG,  # once at INFO per process, then DEBUG
    ]
    assert not [m for m in random_init if "initialized randomly" in m]
    assert [m for m in random_init if "random weights" in m] == [
        "CLIP ovdet-tiny-vit: random weights (no pretrained weights given; set "
        "MODEL.OVD.CLIP.PRETRAINED to a checkpoint file or an open_clip tag for real ones)"
    ]
