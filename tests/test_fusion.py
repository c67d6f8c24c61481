"""Fusion rules on hand-computed probabilities (K = 2: class 0 base, class 1 novel; the last
column is background)."""

import pytest
import torch

from ovdet_plugin.modeling.roi_heads.fusion import (
    fuse_scores,
    fvit_fusion,
    fvlm_fusion,
    objectness_weighting,
    vild_ensemble,
)

P_DET = torch.tensor([[0.5, 0.3, 0.2]])
P_VLM = torch.tensor([[0.2, 0.6, 0.2]])
BASE = torch.tensor([True, False])


def test_fvlm_fusion_background_from_detector_and_renormalised():
    # base: 0.5^0.65 * 0.2^0.35; novel: 0.3^0.35 * 0.6^0.65; bg: 0.2 (detector); / sum.
    got = fvlm_fusion(P_DET, P_VLM, BASE, alpha=0.35, beta=0.65)
    want = torch.tensor([[0.351035460, 0.455460523, 0.193504017]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(1))


def test_fvit_fusion_background_fused_as_base_and_not_renormalised():
    p_vlm = torch.tensor([[0.2, 0.6, 0.5]])
    got = fvit_fusion(P_DET, p_vlm, BASE, alpha=0.1, beta=0.6)
    bg = 0.2**0.9 * 0.5**0.1
    want = torch.tensor([[0.456221768, 0.454714970, bg]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert abs(got.sum().item() - 1.0) > 1e-3  # no renormalisation


def test_vild_ensemble_drops_background_and_weights_by_split():
    p_image = torch.tensor([[0.25, 0.75]])  # softmax over the K classes only
    got = vild_ensemble(P_DET, p_image, BASE)
    # base: p_text^(2/3) p_img^(1/3); novel: p_text^(1/3) p_img^(2/3); bg column = p_text's.
    want = torch.tensor([[0.396850263, 0.552604725, 0.2]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_all_novel_vocabulary_uses_beta_everywhere():
    got = fvlm_fusion(P_DET, P_VLM, torch.tensor([False, False]), alpha=0.0, beta=1.0)
    # beta = 1: the VLM decides the classes; background stays the detector's, then renormalised.
    want = torch.tensor([[0.2, 0.6, 0.2]]) / 1.0
    torch.testing.assert_close(got, want)


def test_objectness_weighting():
    scores = torch.tensor([[0.4, 0.2, 0.4], [0.1, 0.8, 0.1]])
    logits = torch.tensor([0.0, 2.0])
    got = objectness_weighting(scores, logits, power=3.0)
    s = torch.sigmoid(logits) ** 3
    want = torch.tensor([[0.4 * s[0], 0.2 * s[0], 0.4], [0.1 * s[1], 0.8 * s[1], 0.1]])
    torch.testing.assert_close(got, want)
    assert objectness_weighting(scores, logits, 0.0) is scores


def test_fuse_scores_dispatch_and_unknown_rule():
    torch.testing.assert_close(fuse_scores("fvlm", P_DET, P_VLM, BASE, 0.35, 0.65),
                               fvlm_fusion(P_DET, P_VLM, BASE, 0.35, 0.65))  # fmt: skip
    with pytest.raises(ValueError, match="Unknown fusion rule 'fvml'"):
        fuse_scores("fvml", P_DET, P_VLM, BASE, 0.35, 0.65)
