"""Fusion rules on hand-computed probabilities (K = 2: class 0 base, class 1 novel; the last
column is background). Rules take the detector's log-probabilities and the VLM's logits; the
VLM logits here are log-probabilities, so their softmax is the intended VLM distribution."""

import pytest
import torch

from ovdet_plugin.modeling.roi_heads.fusion import (
    FUSION_RULE_REGISTRY,
    fvit,
    fvlm,
    get_fusion_rule,
    objectness_weighting,
    vild_ensemble,
)

P_DET = torch.tensor([[0.5, 0.3, 0.2]])
P_VLM = torch.tensor([[0.2, 0.6, 0.2]])
BASE = torch.tensor([True, False])


def test_fvlm_fusion_background_from_detector_and_renormalised():
    # base: 0.5^0.65 * 0.2^0.35; novel: 0.3^0.35 * 0.6^0.65; bg: 0.2 (detector); / sum.
    got = fvlm(P_DET.log(), P_VLM.log(), BASE, alpha=0.35, beta=0.65)
    want = torch.tensor([[0.351035460, 0.455460523, 0.193504017]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(got.sum(1), torch.ones(1))


def test_fvit_fusion_background_fused_as_base_and_not_renormalised():
    p_vlm = torch.tensor([[0.2, 0.6, 0.5]])
    p_vlm = p_vlm / p_vlm.sum()  # the rule takes logits: softmax(log p) = p / sum(p)
    got = fvit(P_DET.log(), p_vlm.log(), BASE, alpha=0.1, beta=0.6)
    want = P_DET ** torch.tensor([0.9, 0.4, 0.9]) * p_vlm ** torch.tensor([0.1, 0.6, 0.1])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert abs(got.sum().item() - 1.0) > 1e-3  # no renormalisation


def test_vild_ensemble_drops_background_and_weights_by_split():
    # image branch: softmax over the K classes only -> (0.25, 0.75); its bg logit is ignored
    vlm_logits = torch.tensor([[0.25, 0.75, 123.0]]).log()
    got = vild_ensemble(P_DET.log(), vlm_logits, BASE, alpha=1 / 3, beta=2 / 3)
    # base: p_text^(2/3) p_img^(1/3); novel: p_text^(1/3) p_img^(2/3); bg column = p_text's.
    want = torch.tensor([[0.396850263, 0.552604725, 0.2]])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_all_novel_vocabulary_uses_beta_everywhere():
    got = fvlm(P_DET.log(), P_VLM.log(), torch.tensor([False, False]), alpha=0.0, beta=1.0)
    # beta = 1: the VLM decides the classes; background stays the detector's, then renormalised.
    torch.testing.assert_close(got, torch.tensor([[0.2, 0.6, 0.2]]))


def test_fvlm_renormalises_peaked_rows_exactly():
    """Rows whose fused mass underflows in probability space are still renormalised exactly:
    the log-space result equals the float64 reference."""
    det = torch.tensor([[-200.0, -150.0, 0.0], [30.0, -60.0, -90.0]])  # logits
    vlm = torch.tensor([[-90.0, 120.0, -40.0], [-300.0, 0.0, 10.0]])
    det_lp = det.log_softmax(1)
    got = fvlm(det_lp, vlm, BASE, alpha=0.35, beta=0.65)
    lp_det, lp_vlm = det.double().log_softmax(1), vlm.double().log_softmax(1)
    w = torch.tensor([0.35, 0.65], dtype=torch.float64)
    fg = (1 - w) * lp_det[:, :2] + w * lp_vlm[:, :2]
    ref = torch.cat([fg, lp_det[:, 2:]], 1).softmax(1).float()
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got.sum(1), torch.ones(2))
    assert torch.isfinite(got).all()
    # the old probability-space rule loses these rows: its fused mass underflows in float32
    p = det.softmax(1).pow(torch.tensor([0.65, 0.35, 1.0])) * vlm.softmax(1).pow(
        torch.tensor([0.35, 0.65, 0.0])
    )
    assert p[0, :2].sum() == 0 or not torch.allclose(p / p.sum(1, keepdim=True), ref)


@pytest.mark.parametrize("rule", ["fvlm", "fvit", "vild_ensemble"])
def test_rules_are_stable_under_bf16_autocast(rule):
    g = torch.Generator().manual_seed(0)
    det = (torch.randn(64, 11, generator=g) * 40).bfloat16()
    vlm = (torch.randn(64, 11, generator=g) * 80).bfloat16()
    base = torch.arange(10) % 3 != 0
    fn = get_fusion_rule(rule)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fn(det.float().log_softmax(1).bfloat16(), vlm, base, 0.35, 0.65)
    ref = fn(det.float().log_softmax(1), vlm.float(), base, 0.35, 0.65)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got, ref, atol=2e-2, rtol=5e-2)  # bf16 inputs: ~3 digits
    if rule == "fvlm":
        torch.testing.assert_close(got.sum(1), torch.ones(64))


def test_objectness_weighting():
    scores = torch.tensor([[0.4, 0.2, 0.4], [0.1, 0.8, 0.1]])
    logits = torch.tensor([0.0, 2.0])
    got = objectness_weighting(scores, logits, power=3.0)
    s = torch.sigmoid(logits) ** 3
    want = torch.tensor([[0.4 * s[0], 0.2 * s[0], 0.4], [0.1 * s[1], 0.8 * s[1], 0.1]])
    torch.testing.assert_close(got, want)
    assert objectness_weighting(scores, logits, 0.0) is scores


def test_registry_lookup_and_unknown_rule():
    assert get_fusion_rule("fvlm") is fvlm
    assert {"fvlm", "fvit", "vild_ensemble"} <= {name for name, _ in FUSION_RULE_REGISTRY}
    with pytest.raises(ValueError, match="Unknown fusion rule 'fvml'.*known: \\['fvit', 'fvlm'"):
        get_fusion_rule("fvml")
