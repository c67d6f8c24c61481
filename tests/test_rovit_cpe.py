"""RO-ViT cropped positional embedding (methods §4.1) and the pretraining image encoder."""

import pytest
import torch
import torch.nn.functional as F

from ovdet_plugin.clip.dense import interpolate_pos_embed
from ovdet_plugin.pretraining.cropped_pos_embed import (
    CroppedPosEmbed,
    crop_and_resize_pos_embed,
    cropped_positional_embedding,
    sample_crop_boxes,
    upsample_pos_embed,
)
from ovdet_plugin.pretraining.rovit import RegionAwareCLIP


def _coord_embedding(h, w):
    """(h, w, 2) embedding whose channels are the (x, y) index of the cell."""
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return torch.stack([xs, ys], dim=-1)


def test_full_box_without_upsampling_is_identity():
    torch.manual_seed(0)
    patch = torch.randn(7, 7, 16)
    full = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    out = cropped_positional_embedding(patch, full, up_size=(7, 7), out_size=(7, 7), aligned=True)
    assert out.shape == (2, 49, 16)
    torch.testing.assert_close(out[0], patch.reshape(49, 16), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[1], patch.reshape(49, 16), rtol=0, atol=1e-6)


def test_full_box_equals_plain_interpolated_embedding():
    """At a non-native grid, CPE with the whole box and up_size = grid equals the bilinear
    resampling of the embedding with the half-pixel-aligned crop; with the module, the class
    token is unchanged."""
    torch.manual_seed(1)
    pos = torch.randn(1 + 4 * 4, 8)
    cpe = CroppedPosEmbed(up_size=6, aligned=True)
    out = cpe(pos, (4, 4), (6, 6), 3, boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3))
    plain = F.interpolate(
        pos[1:].reshape(1, 4, 4, 8).permute(0, 3, 1, 2), size=(6, 6), mode="bilinear"
    )
    plain = plain[0].permute(1, 2, 0).reshape(36, 8)
    assert out.shape == (3, 37, 8)
    for b in range(3):
        torch.testing.assert_close(out[b, 0], pos[0], rtol=0, atol=0)
        torch.testing.assert_close(out[b, 1:], plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("aligned", [False, True])
def test_crop_follows_the_box(aligned):
    """A hand-made embedding whose values are the cell coordinates: the crop holds exactly the
    coordinates of the box's bin centres (official crop: cell j at coordinate j; aligned: at
    j + 0.5)."""
    h = w = 16
    up = upsample_pos_embed(_coord_embedding(h, w), (h, w))  # no upsampling change
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.25]])
    out = crop_and_resize_pos_embed(up, boxes, (4, 4), aligned=aligned).reshape(2, 4, 4, 2)
    shift = 0.5 if aligned else 0.0
    for b, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        bw, bh = (x1 - x0) * w / 4, (y1 - y0) * h / 4
        xs = torch.tensor([x0 * w + (k + 0.5) * bw - shift for k in range(4)])
        ys = torch.tensor([y0 * h + (k + 0.5) * bh - shift for k in range(4)])
        torch.testing.assert_close(out[b, 0, :, 0], xs, rtol=0, atol=1e-5)
        torch.testing.assert_close(out[b, :, 0, 1], ys, rtol=0, atol=1e-5)
        # values stay constant along the other axis
        assert torch.allclose(out[b, :, :, 0], out[b, :1, :, 0].expand(4, 4))


def test_upsampling_is_bilinear():
    torch.manual_seed(2)
    patch = torch.randn(5, 5, 3)
    up = upsample_pos_embed(patch, (64, 64))
    ref = F.interpolate(patch.permute(2, 0, 1)[None], size=(64, 64), mode="bilinear")[0]
    torch.testing.assert_close(up, ref)


def test_box_statistics():
    g = torch.Generator().manual_seed(0)
    boxes = sample_crop_boxes(4000, scale=(0.1, 1.0), ratio=(0.5, 2.0), generator=g)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()
    area = w * h
    assert area.min() >= 0.1 - 1e-5 and area.max() <= 1 + 1e-5
    ratio = w / h
    fitted = area < 0.999  # the full-box fallback is exempt
    assert ratio[fitted].min() >= 0.5 - 1e-4 and ratio[fitted].max() <= 2.0 + 1e-4
    # positions spread over the image, sizes over the range
    assert boxes[:, 0].max() > 0.5 and area.mean() > 0.3 and area.mean() < 0.7
    assert abs(torch.log(ratio[fitted]).mean()) < 0.1
    # seeded
    again = sample_crop_boxes(4000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_bad_ranges_raise():
    with pytest.raises(ValueError, match="scale"):
        sample_crop_boxes(2, scale=(0.0, 1.0))


def _tiny_model(**kw):
    from ovdet_plugin.clip import build_clip_model

    torch.manual_seed(0)
    return RegionAwareCLIP(clip_model=build_clip_model("ovdet-tiny-vit"), **kw)


def test_cpe_only_in_training_and_eval_matches_open_clip():
    model = _tiny_model(cpe=CroppedPosEmbed(64), pooling="cls")
    images = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        ref = F.normalize(model.clip.encode_image(images), dim=-1)
        out = model.encode_image(images)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    model.train()
    torch.manual_seed(3)
    with torch.no_grad():
        trained = model.encode_image(images)
    assert (trained - ref).abs().max() > 1e-3  # CPE changed the embedding
    # the positional embedding used in training is per image, in eval shared
    model.train()
    assert model.positional_embedding((8, 8), 2).shape == (2, 65, 128)
    model.eval()
    assert model.positional_embedding((8, 8), 2).shape == (65, 128)


def test_gap_pooling_definition():
    model = _tiny_model(pooling="gap").eval()
    images = torch.randn(2, 3, 64, 64)
    visual = model.clip.visual
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.view(1, 1, -1).expand(2, -1, -1)
        x = visual.transformer(visual.ln_pre(torch.cat([cls, x], 1) + visual.positional_embedding))
        ref = F.normalize(visual.ln_post(x[:, 1:].mean(1)) @ visual.proj, dim=-1)
        torch.testing.assert_close(model.encode_image(images), ref, rtol=1e-5, atol=1e-5)


def test_cpe_on_resnet_tower_is_an_error():
    from ovdet_plugin.clip import build_clip_model

    with pytest.raises(TypeError, match="VisionTransformer"):
        RegionAwareCLIP(clip_model=build_clip_model("ovdet-tiny-rn"), cpe=CroppedPosEmbed())


def test_interpolated_grid_in_eval():
    """At a non-native input size, eval uses helper-1's bicubic interpolation (detection rule)."""
    model = _tiny_model(cpe=CroppedPosEmbed(64)).eval()
    pos = model.positional_embedding((12, 12), 1)
    ref = interpolate_pos_embed(model.clip.visual.positional_embedding, (8, 8), (12, 12))
    torch.testing.assert_close(pos, ref)


def test_fast_separable_cpe_equals_upsample_then_roialign():
    """The matrix form used in training equals the two-step reference (bilinear upsampling, then
    torchvision RoIAlign), boxes touching the borders included."""
    torch.manual_seed(4)
    patch = torch.randn(7, 5, 6)
    boxes = torch.cat(
        [
            sample_crop_boxes(20, generator=torch.Generator().manual_seed(1)),
            torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.9, 0.0, 1.0, 0.05]]),
        ]
    )
    for aligned in (False, True):  # the official crop (boxes >= 1 cell) and the aligned one
        for up, out in [((64, 64), (7, 5)), ((16, 12), (9, 9)), ((7, 5), (7, 5))]:
            fast = cropped_positional_embedding(
                patch, boxes, up_size=up, out_size=out, aligned=aligned
            )
            up_pos = upsample_pos_embed(patch, up)
            ref = crop_and_resize_pos_embed(up_pos, boxes, out, aligned=aligned)
            torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    # gradients reach the embedding
    p = patch.clone().requires_grad_(True)
    cropped_positional_embedding(p, boxes, up_size=(64, 64), out_size=(7, 5)).sum().backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
