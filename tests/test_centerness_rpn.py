"""RO-ViT / OLN centerness RPN (methods §4.3): targets, box coding, losses, tiny GeneralizedRCNN."""

import math
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import ovdet_plugin
from ovdet_plugin.modeling.proposal_generator import (
    CenternessRPN,
    LRTBTransform,
    centerness_targets,
    iou_loss,
)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**opts):
    cfg = get_cfg()
    ovdet_plugin.add_ovdet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs/test/tiny_centerness_rpn.yaml"))
    for k, v in opts.items():
        cfg.merge_from_list([k, v])
    return cfg


def test_centerness_targets_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    points = torch.tensor([[5.0, 10.0], [2.0, 10.0], [5.0, 5.0], [2.0, 15.0], [12.0, 5.0]])
    got = centerness_targets(points, boxes)
    want = [
        1.0,  # the centre
        math.sqrt(2 / 8 * 1.0),
        math.sqrt(1.0 * 5 / 15),
        math.sqrt(2 / 8 * 5 / 15),
        0.0,  # outside
    ]
    torch.testing.assert_close(got, torch.tensor(want))
    # batch broadcasting: (N, R, 2) points vs (N, R, 4) boxes
    b = centerness_targets(points[None].expand(2, -1, -1), boxes[None].expand(2, 5, -1))
    assert b.shape == (2, 5)


def test_lrtb_coding_roundtrip_and_zero_delta_is_anchor():
    t = LRTBTransform()
    anchors = torch.tensor([[0.0, 0.0, 32.0, 32.0], [10.0, 10.0, 26.0, 26.0]])
    boxes = torch.tensor([[4.0, 2.0, 40.0, 20.0], [0.0, 12.0, 20.0, 30.0]])
    deltas = t.get_deltas(anchors, boxes)
    torch.testing.assert_close(t.apply_deltas(deltas, anchors), boxes)
    # zero deltas: distances = anchor size from the centre (a box twice the anchor)
    zero = t.apply_deltas(torch.zeros(2, 4), anchors)
    torch.testing.assert_close(zero[0], torch.tensor([-16.0, -16.0, 48.0, 48.0]))


def test_iou_loss_by_hand():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    assert abs(iou_loss(a, b).item() - (0 + (1 - 50 / 150))) < 1e-6
    assert iou_loss(a, b, "giou").item() > iou_loss(a, b).item() - 1e-6
    with pytest.raises(ValueError, match="IOU_LOSS_TYPE"):
        iou_loss(a, b, "l1")


def test_losses_on_hand_made_targets():
    """Centerness loss on a single-level hand-built case, checked by hand."""
    cfg = _cfg()
    model = build_model(cfg)
    rpn = model.proposal_generator
    assert isinstance(rpn, CenternessRPN)
    anchors = [Boxes(torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 0.0, 32.0, 16.0]]))]
    logits = [torch.zeros(1, 2)]  # sigmoid 0.5
    deltas = [torch.zeros(1, 2, 4)]
    gt_boxes = [torch.tensor([[0.0, 0.0, 32.0, 16.0], [0.0, 0.0, 32.0, 16.0]])]
    gt_labels = [torch.tensor([1, 0])]
    with EventStorage():
        losses = rpn.losses(anchors, logits, gt_labels, deltas, gt_boxes)
    # anchor 0 centre (8, 8) in (0,0,32,16): l=8 r=24 t=8 b=8 -> sqrt(1/3)
    ctr = math.sqrt(8 / 24)
    norm = cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE
    want_ctr = (abs(0.5 - ctr) + abs(0.5 - 0.0)) / norm
    assert abs(losses["loss_rpn_centerness"].item() - want_ctr) < 1e-6
    # zero deltas decode to (-8,-8,24,24) vs gt (0,0,32,16): IoU = 24*16 / (32*32 + 32*16 - 24*16)
    iou = 24 * 16 / (32 * 32 + 32 * 16 - 24 * 16)
    assert abs(losses["loss_rpn_iou"].item() - 8.0 * (1 - iou) / norm) < 1e-5


def test_more_than_one_anchor_is_an_error():
    with pytest.raises(ValueError, match="ASPECT_RATIOS"):
        build_model(_cfg(**{"MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS": "[[0.5, 1.0, 2.0]]"}))


def _batch(g):
    data = []
    for _ in range(2):
        img = torch.randint(0, 40, (3, 128, 160), generator=g, dtype=torch.uint8)
        inst = Instances((128, 160))
        boxes = torch.tensor([[20.0, 30.0, 70.0, 100.0], [90.0, 10.0, 150.0, 60.0]])
        for x0, y0, x1, y1 in boxes.int().tolist():
            img[:, y0:y1, x0:x1] = 220  # bright boxes on a dark background
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, 1])
        data.append({"image": img, "instances": inst, "height": 128, "width": 160})
    return data


def test_trains_inside_tiny_generalized_rcnn():
    torch.manual_seed(0)
    cfg = _cfg()
    model = build_model(cfg)
    model.train()
    data = _batch(torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    first = None
    with EventStorage():
        for _ in range(8):
            losses = model(data)
            assert {"loss_rpn_centerness", "loss_rpn_iou", "loss_cls"} <= set(losses)
            rpn_loss = losses["loss_rpn_centerness"] + losses["loss_rpn_iou"]
            first = rpn_loss.item() if first is None else first
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    assert rpn_loss.item() < first
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image(data)
        features = model.backbone(images.tensor)
        proposals, _ = model.proposal_generator(images, features)
        out = model(data)
    assert len(out) == 2 and "instances" in out[0]
    assert proposals[0].has("objectness_logits") and len(proposals[0]) > 0
    assert len(proposals[0]) <= cfg.MODEL.RPN.POST_NMS_TOPK_TEST
