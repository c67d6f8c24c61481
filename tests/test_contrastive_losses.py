"""Focal contrastive loss (RO-ViT, methods §4.2) and the softmax CLIP loss, by hand."""

import math

import torch
import torch.nn.functional as F

from ovdet_plugin.pretraining.contrastive_losses import (
    focal_contrastive_loss,
    sigmoid_focal_matrix_loss,
    softmax_contrastive_loss,
)

LOGITS = [[2.0, -1.0, 0.5], [0.3, 1.5, -2.0], [-0.7, 0.1, 3.0]]


def _hand_focal(logits, alpha, gamma):
    total = 0.0
    for i, row in enumerate(logits):
        for j, x in enumerate(row):
            p = 1 / (1 + math.exp(-x))
            if i == j:
                bce, m, w = -math.log(p), (1 - p) ** gamma, alpha
            else:
                bce, m, w = -math.log(1 - p), p**gamma, 1 - alpha
            total += bce * m * 2 * w
    return total


def test_focal_matches_hand_computation():
    x = torch.tensor(LOGITS)
    for alpha, gamma in [(0.5, 1.0), (0.25, 2.0), (0.7, 0.5)]:
        got = sigmoid_focal_matrix_loss(x, alpha=alpha, gamma=gamma)
        assert abs(got.item() - _hand_focal(LOGITS, alpha, gamma)) < 1e-5
    got = sigmoid_focal_matrix_loss(x, normalizer=3.0)
    assert abs(got.item() - _hand_focal(LOGITS, 0.5, 1.0) / 3.0) < 1e-5
    # value pinned for the defaults
    assert abs(_hand_focal(LOGITS, 0.5, 1.0) - 1.77523) < 1e-4


def test_gamma0_alpha05_is_sigmoid_bce():
    x = torch.tensor(LOGITS)
    got = sigmoid_focal_matrix_loss(x, alpha=0.5, gamma=0.0)
    ref = F.binary_cross_entropy_with_logits(x, torch.eye(3), reduction="sum")
    torch.testing.assert_close(got, ref)


def test_both_directions_and_features():
    torch.manual_seed(0)
    img = F.normalize(torch.randn(4, 8), dim=-1)
    txt = F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.t()
    got = focal_contrastive_loss(img, txt, scale, alpha=0.25, gamma=2.0)
    i2t = sigmoid_focal_matrix_loss(logits, alpha=0.25, gamma=2.0)
    t2i = sigmoid_focal_matrix_loss(logits.t(), alpha=0.25, gamma=2.0)
    torch.testing.assert_close(got, 0.5 * (i2t + t2i))
    bias = torch.tensor(-2.0)
    got_b = focal_contrastive_loss(img, txt, scale, bias)
    torch.testing.assert_close(got_b, sigmoid_focal_matrix_loss(logits - 2.0))


def test_softmax_loss_by_hand():
    torch.manual_seed(1)
    img = F.normalize(torch.randn(3, 5), dim=-1)
    txt = F.normalize(torch.randn(3, 5), dim=-1)
    scale = torch.tensor(7.0)
    L = (scale * img @ txt.t()).tolist()
    i2t = sum(-L[i][i] + math.log(sum(math.exp(v) for v in L[i])) for i in range(3)) / 3
    t2i = sum(-L[i][i] + math.log(sum(math.exp(L[k][i]) for k in range(3))) for i in range(3)) / 3
    got = softmax_contrastive_loss(img, txt, scale)
    assert abs(got.item() - 0.5 * (i2t + t2i)) < 1e-5


def test_focal_gradient_flows_and_prefers_matching_pairs():
    x = torch.zeros(3, 3, requires_grad=True)
    sigmoid_focal_matrix_loss(x).backward()
    g = x.grad
    assert (g.diagonal() < 0).all()  # raise positives
    assert (g - torch.diag(g.diagonal()) >= 0).all()  # lower negatives


def test_multipositive_loss_is_softmax_loss_when_captions_differ_and_spreads_over_repeats():
    from ovdet_plugin.pretraining.contrastive_losses import (
        multipositive_softmax_loss,
        softmax_contrastive_loss,
    )

    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    scale = torch.tensor(10.0)
    distinct = multipositive_softmax_loss(img, txt, scale, torch.arange(5))
    assert torch.allclose(distinct, softmax_contrastive_loss(img, txt, scale))

    # Pairs 0 and 1 share a caption: row 0's target is half on column 0, half on column 1.
    ids = torch.tensor([0, 0, 1, 2, 3])
    logits = scale * img @ txt.t()
    target = torch.eye(5)
    target[0, :2] = target[1, :2] = 0.5
    i2t = -(target * logits.log_softmax(1)).sum(1).mean()
    t2i = -(target * logits.t().log_softmax(1)).sum(1).mean()
    assert torch.allclose(multipositive_softmax_loss(img, txt, scale, ids), 0.5 * (i2t + t2i))
