"""The open-vocabulary classifier and predictor: cosine logits, background modes, temperatures,
novel-class masks and the weighted background loss, with hand-computed (golden) values."""

import math

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from ovdet_plugin.modeling.roi_heads.ov_predictor import (
    OVFastRCNNOutputLayers,
    TextClassifier,
    weighted_background_ce,
)
from ovdet_plugin.modeling.roi_heads.vild import vild_distillation_loss
from ovdet_plugin.vocabulary import Vocabulary

EMB = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=1)  # K = 2, D = 3
BASE = torch.tensor([True, False])
BG = torch.tensor([0.0, 0.0, 1.0])


def _classifier(**kw):
    kw.setdefault("background", "text")
    kw.setdefault("background_embedding", BG)
    return TextClassifier(EMB, BASE, **kw)


def test_cosine_logits_with_fixed_temperature():
    clf = _classifier(temperature=100.0)
    region = F.normalize(torch.tensor([[1.0, 1.0, 0.0]]), dim=1)
    c = 1 / math.sqrt(2)
    torch.testing.assert_close(clf(region), torch.tensor([[100 * c, 100 * c, 0.0]]))


def test_learnable_temperatures():
    region = F.normalize(torch.tensor([[1.0, 0.0, 1.0]]), dim=1)
    inv = _classifier(temperature=100.0, learn_temperature="inverse")  # cos * T / t (F-VLM)
    with torch.no_grad():
        inv.inverse_temperature.fill_(2.0)
    c = 1 / math.sqrt(2)
    torch.testing.assert_close(inv(region), torch.tensor([[50 * c, 0.0, 50 * c]]))
    scale = _classifier(temperature=50.0, learn_temperature="scale")  # cos * s, s init 50 (F-ViT)
    assert scale.logit_scale.item() == 50.0
    scale(region).sum().backward()
    assert scale.logit_scale.grad is not None


def test_learned_background_is_a_normalised_parameter():
    clf = TextClassifier(EMB, BASE, background="learned")
    assert isinstance(clf.bg_embedding, torch.nn.Parameter)
    rows = clf.rows()
    assert rows.shape == (3, 3)
    torch.testing.assert_close(rows.norm(dim=1), torch.ones(3))


def test_novel_masks():
    logits = torch.tensor([[2.0, 5.0, 1.0]])
    zero = _classifier(novel_mask="zero")
    torch.testing.assert_close(zero.mask_novel(logits), torch.tensor([[2.0, 0.0, 1.0]]))
    neg = _classifier(novel_mask="neg_inf")
    masked = neg.mask_novel(logits)
    assert masked[0, 1] == torch.finfo(torch.float32).min and masked[0, 2] == 1.0
    assert masked.softmax(dim=1)[0, 1] == 0.0
    assert torch.equal(_classifier(novel_mask="none").mask_novel(logits), logits)


def test_train_and_test_vocabularies():
    clf = _classifier()
    clf.set_vocabulary(Vocabulary.from_names(list("abcde")), torch.randn(5, 3))
    clf.train()
    assert clf.num_classes == 2 and clf.base_mask.tolist() == [True, False]
    clf.eval()
    assert clf.num_classes == 5 and not clf.base_mask.any()  # custom vocabulary: all novel
    with pytest.raises(ValueError, match=r"expects \(K, 3\).*another width"):
        clf.set_vocabulary(Vocabulary.from_names(list("abcd")), torch.randn(4, 8))
    with pytest.raises(ValueError, match="3 text embeddings for 4 classes"):
        clf.set_vocabulary(Vocabulary.from_names(list("abcd")), torch.randn(3, 3))
    assert clf.test_vocabulary.names == tuple("abcde")  # a refused swap changes nothing
    assert "test_embeddings" not in clf.state_dict()  # checkpoints never carry vocabularies


def test_bad_choices_are_named():
    with pytest.raises(ValueError, match="MODEL.OVD.CLASSIFIER.BACKGROUND must be one of"):
        TextClassifier(EMB, BASE, background="zero")
    with pytest.raises(ValueError, match="NOVEL_MASK must be one of"):
        _classifier(novel_mask="minus_inf")


def test_weighted_background_ce_golden():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    gt = torch.tensor([0, 2])  # the second RoI is background
    # ce0 = log(1 + e^-2 + e^-1) = 0.407606; ce1 = log(1 + e^-3 + e^-2) = 0.169846
    got = weighted_background_ce(logits, gt, 0.9)
    assert abs(got.item() - (0.407606 + 0.9 * 0.169846) / 2) < 1e-5
    assert abs(weighted_background_ce(logits, gt, 1.0).item() - 0.288726) < 1e-5


def test_vild_distillation_loss_golden():
    student = torch.tensor([[3.0, 4.0], [1.0, 0.0]])  # normalised: [0.6, 0.8], [1, 0]
    teacher = torch.tensor([[0.0, 2.0], [1.0, 0.0]])  # normalised: [0, 1], [1, 0]
    # per RoI sum |diff|: 0.6 + 0.2 = 0.8 and 0 -> mean 0.4
    assert abs(vild_distillation_loss(student, teacher).item() - 0.4) < 1e-6
    empty = torch.zeros(0, 2, requires_grad=True)
    loss = vild_distillation_loss(empty, torch.zeros(0, 2))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad is not None


def _predictor(novel_mask="zero", bg_weight=1.0):
    clf = _classifier(temperature=1.0, novel_mask=novel_mask)
    return OVFastRCNNOutputLayers(
        ShapeSpec(channels=4),
        text_classifier=clf,
        background_weight=bg_weight,
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=2,
        cls_agnostic_bbox_reg=True,
    )


def _proposals(gt_classes):
    n = len(gt_classes)
    p = Instances((32, 32), proposal_boxes=Boxes(torch.tensor([[0.0, 0, 10, 10]] * n)))
    p.gt_boxes = Boxes(torch.tensor([[1.0, 1, 11, 11]] * n))
    p.gt_classes = torch.tensor(gt_classes)
    return [p]


@pytest.mark.parametrize("mask,want", [("zero", 0.251265), ("neg_inf", 0.180925)])
def test_predictor_loss_with_novel_mask_golden(mask, want):
    pred = _predictor(novel_mask=mask)
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])  # class 1 is novel
    with EventStorage():
        losses = pred.losses((logits, torch.zeros(2, 4)), _proposals([0, 2]))
    assert abs(losses["loss_cls"].item() - want) < 1e-5


def test_predictor_background_weight_golden():
    pred = _predictor(novel_mask="none", bg_weight=0.9)
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 3.0]])
    with EventStorage():
        losses = pred.losses((logits, torch.zeros(2, 4)), _proposals([0, 2]))
    assert abs(losses["loss_cls"].item() - 0.280233) < 1e-5


def test_empty_proposal_batch_still_gives_gradients():
    pred = _predictor(bg_weight=0.9)
    features = torch.zeros(0, 4, requires_grad=True)
    with EventStorage():
        losses = pred.losses(pred(features), _proposals([]))
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)
    assert pred.projection.weight.grad is not None and pred.bbox_pred.weight.grad is not None


def test_predictor_requires_class_agnostic_boxes():
    with pytest.raises(ValueError, match="CLS_AGNOSTIC_BBOX_REG True"):
        OVFastRCNNOutputLayers(
            ShapeSpec(channels=4),
            text_classifier=_classifier(),
            box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
            num_classes=2,
            cls_agnostic_bbox_reg=False,
        )


def test_sigmoid_ce_with_federated_loss():
    """Detectron2's sigmoid-CE and federated-loss switches work on the open-vocabulary logits."""
    torch.manual_seed(0)
    pred = OVFastRCNNOutputLayers(
        ShapeSpec(channels=4),
        text_classifier=_classifier(temperature=10.0, novel_mask="neg_inf"),
        box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
        num_classes=2,
        cls_agnostic_bbox_reg=True,
        use_sigmoid_ce=True,
        use_fed_loss=True,
        get_fed_loss_cls_weights=lambda: torch.ones(2),
        fed_loss_num_classes=2,
    )
    features = torch.randn(2, 4, requires_grad=True)
    with EventStorage():
        losses = pred.losses(pred(features), _proposals([0, 2]))
    assert torch.isfinite(losses["loss_cls"]) and losses["loss_cls"] > 0
    losses["loss_cls"].backward()
    assert pred.projection.weight.grad is not None
