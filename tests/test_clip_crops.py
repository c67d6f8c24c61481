"""``ovdet_plugin.clip.crops``, the one home of crop-then-encode (issue 12): it must compute
exactly what the ViLD precompute tool and the CLIPSelf teacher computed before it existed, so the
generated-data benchmark's figures do not move. The references below are verbatim copies of the
removed code (``tools/precompute_vild_embeddings.py`` ``scaled_boxes``/``crop_embeddings`` and
``pretraining/clipself.py`` ``scale_boxes``/``crop_regions``/``resize_max_size``/``_normalize``)."""

import pytest
import torch
import torch.nn.functional as F
from open_clip import OPENAI_DATASET_MEAN as CLIP_MEAN
from open_clip import OPENAI_DATASET_STD as CLIP_STD
from torchvision.ops import roi_align

from ovdet_plugin.clip import build_clip_model, clip_image_size
from ovdet_plugin.clip.crops import (
    crop_embeddings,
    encode_crops,
    enlarge_boxes,
    normalize_for_clip,
    padded_crops,
    resize_max_size,
)
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
    model.teacher_size, model.teacher_crop_scale = 32, 1.5
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
