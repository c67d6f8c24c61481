"""``ovdet_plugin.clip.crops``, the one home of crop-then-encode: it must compute exactly what
the ViLD precompute tool, the CLIPSelf teacher and the zero-shot crop check computed before it
existed, so the generated-data benchmark's figures do not move. The references below are
verbatim copies of the removed code (``tools/precompute_vild_embeddings.py``
``scaled_boxes``/``crop_embeddings``, ``pretraining/clipself.py``
``scale_boxes``/``crop_regions``/``resize_max_size``/``_normalize``, and the zero-shot check's
``_crop_box``/``to_clip_tensor``/encoding loop)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip import OPENAI_DATASET_MEAN as CLIP_MEAN
from open_clip import OPENAI_DATASET_STD as CLIP_STD
from torchvision.ops import roi_align

from ovdet_plugin.clip import build_clip_model, clip_image_size
from ovdet_plugin.clip.crops import (
    context_boxes,
    context_crops,
    crop_embeddings,
    encode_crops,
    enlarge_boxes,
    normalize_for_clip,
    padded_crops,
    resize_max_size,
    square_crops,
    square_resize,
)
from ovdet_plugin.evaluation.zero_shot_crops import group_accuracy, zero_shot_accuracy
from ovdet_plugin.pretraining.clipself import CLIPSelfModel, sample_grid_boxes

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------- the removed code, verbatim
def _old_scaled_boxes(boxes, scale, height, width):
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * scale / 2
    out = torch.cat([centre - half, centre + half], dim=1)
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


@torch.no_grad()
def _old_crop_embeddings(clip_model, image, boxes, scales, batch_size=64):
    size = clip_image_size(clip_model)
    mean = image.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = image.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    h, w = image.shape[1:]
    total = 0
    for scale in scales:
        rois = _old_scaled_boxes(boxes, scale, h, w)
        parts = []
        for start in range(0, len(rois), batch_size):
            chunk = rois[start : start + batch_size]
            index = torch.zeros(len(chunk), 1, dtype=chunk.dtype, device=chunk.device)
            crops = roi_align(image[None], torch.cat([index, chunk], 1), size, 1.0, 2, True)
            parts.append(F.normalize(clip_model.encode_image((crops - mean) / std).float(), dim=1))
        total = total + torch.cat(parts)
    return F.normalize(total, dim=1)


def _old_scale_boxes(boxes, scale, width, height):
    if scale != 1.0:
        c = 0.5 * (boxes[:, :2] + boxes[:, 2:])
        half = 0.5 * scale * (boxes[:, 2:] - boxes[:, :2])
        boxes = torch.cat([c - half, c + half], dim=1)
    x0 = boxes[:, 0].floor().clamp(0, width - 1)
    y0 = boxes[:, 1].floor().clamp(0, height - 1)
    x1 = torch.maximum(boxes[:, 2].ceil().clamp(max=width), x0 + 1)
    y1 = torch.maximum(boxes[:, 3].ceil().clamp(max=height), y0 + 1)
    return torch.stack([x0, y0, x1, y1], dim=1)


def _old_teacher_inputs(image, boxes, size, scale):
    h, w = image.shape[-2:]
    mean = image.new_tensor(CLIP_MEAN).view(-1, 1, 1)
    std = image.new_tensor(CLIP_STD).view(-1, 1, 1)
    crops = [
        image[:, int(y0) : int(y1), int(x0) : int(x1)]
        for x0, y0, x1, y1 in _old_scale_boxes(boxes, scale, w, h).tolist()
    ]
    return torch.stack([(resize_max_size(c, size) - mean) / std for c in crops])


def _old_crop_box(image, xyxy, context):
    x0, y0, x1, y1 = xyxy
    dx, dy = (x1 - x0) * context, (y1 - y0) * context
    h, w = image.shape[:2]
    x0, y0 = int(max(0, np.floor(x0 - dx))), int(max(0, np.floor(y0 - dy)))
    x1, y1 = int(min(w, np.ceil(x1 + dx))), int(min(h, np.ceil(y1 + dy)))
    return image[y0:y1, x0:x1]


def _old_to_clip_tensor(images):
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# ---------------------------------------------------------------- inputs
def _random_boxes(n, width, height, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) * 0.9 - 3  # some outside
    wh = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) * 0.5 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return build_clip_model("ovdet-tiny-vit").eval()


def test_enlarge_boxes_is_keyword_only_width_then_height():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    out = enlarge_boxes(boxes, 3.0, width=45, height=200)
    assert out.tolist() == [[0.0, 0.0, 45.0, 100.0]]  # x clipped at width 45, y at 0
    with pytest.raises(TypeError):
        enlarge_boxes(boxes, 3.0, 45, 200)


def test_vild_crop_embeddings_equal_the_precompute_tool_before(tiny_vit):
    image = torch.rand(3, 90, 130, generator=torch.Generator().manual_seed(1))
    boxes = _random_boxes(11, 130, 90, seed=2)
    new = crop_embeddings(tiny_vit, image, boxes, (1.0, 1.5), batch_size=4)
    old = _old_crop_embeddings(tiny_vit, image, boxes, (1.0, 1.5), batch_size=4)
    assert new.shape == (11, 64) and torch.equal(new, old)


@pytest.mark.parametrize("scale", [1.0, 1.5, 1.3])
def test_clipself_teacher_crops_equal_the_clipself_code_before(scale):
    image = torch.rand(3, 70, 100, generator=torch.Generator().manual_seed(3))
    proposals = _random_boxes(9, 100, 70, seed=4)
    grid = sample_grid_boxes(100, 70, max_boxes=12, generator=torch.Generator().manual_seed(5))
    for boxes in (proposals, grid):
        new = normalize_for_clip(padded_crops(image, boxes, 32, scale))
        assert torch.equal(new, _old_teacher_inputs(image, boxes, 32, scale))


def test_clipself_model_uses_the_shared_crops():
    image = torch.rand(3, 70, 100, generator=torch.Generator().manual_seed(6))
    boxes = _random_boxes(5, 100, 70, seed=7)
    model = CLIPSelfModel.__new__(CLIPSelfModel)
    model.teacher_size, model.teacher_crop_scale, model.teacher_crop_style = 32, 1.5, "padded"
    assert torch.equal(
        CLIPSelfModel.teacher_inputs(model, image, boxes),
        _old_teacher_inputs(image, boxes, 32, 1.5),
    )


def test_encode_crops_batches_change_nothing(tiny_vit):
    crops = torch.rand(7, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        whole = encode_crops(tiny_vit.encode_image, crops)
        parts = encode_crops(tiny_vit.encode_image, crops, batch_size=3)
    torch.testing.assert_close(whole, parts, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole.norm(dim=-1), torch.ones(7))


# ---------------------------------------------------------------- the zero-shot crop check
def test_context_boxes_pinned():
    boxes = [[10, 10, 40, 20], [0.5, 3.25, 17.75, 60], [20, 30, 50, 70]]
    assert context_boxes(boxes, 0.1, width=100, height=80).tolist() == [
        [7.0, 9.0, 43.0, 21.0],
        [0.0, 0.0, 20.0, 66.0],
        [17.0, 26.0, 53.0, 74.0],
    ]
    # the margin arithmetic, not the centre-scale one of enlarge_boxes (1.1 is inexact):
    # 20 - 180 * 0.05 is 11 exactly, (20 + 200) / 2 - 180 * 1.1 / 2 is just below 11
    box = [[20.0, 134.0, 200.0, 243.0]]
    assert context_boxes(box, 0.05, width=1000, height=1000).tolist() == [[11, 128, 209, 249]]
    scaled = enlarge_boxes(torch.tensor(box, dtype=torch.float64), 1.1, width=1000, height=1000)
    assert scaled[0, 0].floor() == 10


@pytest.mark.parametrize("context", [0.1, 0.0, 0.05, 0.3])
def test_context_crops_equal_the_zero_shot_code_before(context):
    rng = np.random.default_rng(9)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    floats = _random_boxes(20, 130, 90, seed=10).double().clamp(min=0)
    ints = torch.tensor(rng.integers(0, 60, (20, 2))).double()
    ints = torch.cat([ints, ints + torch.tensor(rng.integers(1, 60, (20, 2)))], 1)
    for boxes in (floats, ints):
        new = context_crops(image, boxes, context)
        for crop, box in zip(new, boxes.tolist()):
            assert np.array_equal(crop, _old_crop_box(image, box, context))


def test_square_crops_pinned_and_equal_the_zero_shot_code_before():
    yy, xx = np.mgrid[0:60, 0:80]
    image = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)
    boxes = [[10, 5, 50, 25], [60, 10, 70, 55]]
    crops = square_crops(image, boxes, 16, context=0.1)
    old = _old_to_clip_tensor(
        np.stack([square_resize(_old_crop_box(image, b, 0.1), 16) for b in boxes])
    )
    assert crops.shape == (2, 3, 16, 16) and torch.equal(normalize_for_clip(crops), old)
    # pinned: the wide box's square pad (its border colour) above it, the centres, the tall
    # box's pad beside it
    pixels = (crops * 255).round().to(torch.uint8)
    assert pixels[0, :, 0, 0].tolist() == [88, 58, 88]
    assert pixels[0, :, 8, 8].tolist() == [93, 64, 94]
    assert pixels[1, :, 8, 0].tolist() == [194, 128, 185]
    assert pixels[1, :, 8, 8].tolist() == [200, 135, 201]
    assert square_crops(image, [], 16).shape == (0, 3, 16, 16)


def test_zero_shot_accuracy_equals_the_zero_shot_code_before(tiny_clip):
    """A tiny random CLIP on a few generated crops: the same predictions as the encoding loop of
    the zero-shot check before it used encode_crops (normalised crops, F.normalize per batch)."""
    model, tokenizer = tiny_clip
    g = torch.Generator().manual_seed(11)
    images = torch.rand(10, 3, 64, 64, generator=g)
    names = ["cat", "dog", "remote control", "zebra"]
    crops = {
        "images": images,
        "category_ids": [i % 4 for i in range(10)],
        "frequencies": ["r", "c", "f", "f", "r", "c", "f", "c", "r", "f"],
        "categories": [{"id": i, "name": n} for i, n in enumerate(names)],
    }
    got = zero_shot_accuracy(model, tokenizer, crops, batch_size=3)
    from ovdet_plugin.clip.text_embeddings import encode_vocabulary

    with torch.no_grad():
        text = encode_vocabulary(model, tokenizer, names, prompts="single", show_progress=False)
        normalised = normalize_for_clip(images)
        feats = torch.cat(
            [
                F.normalize(model.encode_image(normalised[i : i + 3]).float(), dim=-1)
                for i in (0, 3, 6, 9)
            ]
        )
    pred = (feats @ text.t()).argmax(dim=1).tolist()
    assert got == group_accuracy(pred, crops["category_ids"], crops["frequencies"])
    assert got["n_all"] == 10
