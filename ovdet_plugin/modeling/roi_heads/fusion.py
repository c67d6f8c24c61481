"""Score-fusion rules: pure functions on class probabilities.

Shape convention (Detectron2's): K foreground classes, background is the LAST column (index K).
ViLD and F-VLM put background at index 0; the rules are the same with the columns moved.

Every rule takes ``base_mask`` (K,) bool: True for base classes (trained with boxes), False for
novel ones. ``alpha``/``beta`` are the VLM weights for base/novel classes.
"""

from typing import Dict

import torch

__all__ = [
    "FUSION_RULES",
    "fuse_scores",
    "fvlm_fusion",
    "fvit_fusion",
    "vild_ensemble",
    "objectness_weighting",
]


def _geometric(p_det: torch.Tensor, p_vlm: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """p_det^(1-w) * p_vlm^w, elementwise; w broadcasts over columns."""
    return p_det.clamp(min=0).pow(1.0 - weight) * p_vlm.clamp(min=0).pow(weight)


def _column_weights(base_mask: torch.Tensor, alpha: float, beta: float, like: torch.Tensor):
    """(K,) VLM weight per foreground class: alpha for base, beta for novel."""
    mask = base_mask.to(device=like.device, dtype=torch.bool)
    return torch.where(mask, like.new_tensor(alpha), like.new_tensor(beta))


def fvlm_fusion(
    p_det: torch.Tensor, p_vlm: torch.Tensor, base_mask: torch.Tensor, alpha=0.35, beta=0.65
) -> torch.Tensor:
    """F-VLM (METHODS 2.4; fvlm/modeling/task_heads.py ``ensemble_class_outputs``).

    Foreground: base p_det^(1-alpha) p_vlm^alpha, novel p_det^(1-beta) p_vlm^beta. The background
    probability is the detector's; the whole row is then renormalised to sum to 1.

    Args:
        p_det, p_vlm: (N, K+1) probabilities (softmax including background).
    Returns:
        (N, K+1) probabilities.
    """
    k = p_det.shape[1] - 1
    w = _column_weights(base_mask, alpha, beta, p_det)
    fused = torch.cat([_geometric(p_det[:, :k], p_vlm[:, :k], w), p_det[:, k:]], dim=1)
    return fused / fused.sum(dim=1, keepdim=True).clamp(min=1e-12)


def fvit_fusion(
    p_det: torch.Tensor, p_vlm: torch.Tensor, base_mask: torch.Tensor, alpha=0.1, beta=0.6
) -> torch.Tensor:
    """F-ViT / CLIPSelf (METHODS 3.8; F-ViT/models/fvit_head.py).

    Base classes AND background: p_det^(1-alpha) p_vlm^alpha; novel: p_det^(1-beta) p_vlm^beta.
    No renormalisation.

    Args:
        p_det, p_vlm: (N, K+1) probabilities.
    Returns:
        (N, K+1) scores.
    """
    w = torch.cat([_column_weights(base_mask, alpha, beta, p_det), p_det.new_tensor([alpha])])
    return _geometric(p_det, p_vlm, w)


def vild_ensemble(
    p_text: torch.Tensor, p_image: torch.Tensor, base_mask: torch.Tensor, weight: float = 2.0 / 3
) -> torch.Tensor:
    """ViLD-ensemble (METHODS 1.6; ops/postprocess_ops.py ``GenericDetectionGenerator``).

    base: p_text^weight * p_image^(1-weight); novel: p_text^(1-weight) * p_image^weight, with
    weight = 2/3 (lambda). Background is dropped before fusing and nothing is renormalised.

    Args:
        p_text: (N, K+1) softmax of the text branch (with background).
        p_image: (N, K) softmax of the image branch over the K classes only (no background).
    Returns:
        (N, K+1) scores; the background column is p_text's (Detectron2's inference ignores it).
    """
    k = p_text.shape[1] - 1
    # VLM-side weight per class: 1-weight (=1/3) for base, weight (=2/3) for novel.
    w = _column_weights(base_mask, 1.0 - weight, weight, p_text)
    return torch.cat([_geometric(p_text[:, :k], p_image, w), p_text[:, k:]], dim=1)


def objectness_weighting(scores: torch.Tensor, objectness_logits: torch.Tensor, power: float):
    """Multiply the foreground scores by sigmoid(objectness)^power (F-VLM ``objectness_weight``,
    METHODS 2.4; DITO/RO-ViT use the centerness RPN's score with power 3, METHODS 4.3).

    Args:
        scores: (N, K+1); objectness_logits: (N,).
    Returns:
        (N, K+1) with the K foreground columns reweighted (background unchanged).
    """
    if power == 0:
        return scores
    factor = torch.sigmoid(objectness_logits).pow(power).unsqueeze(1)
    return torch.cat([scores[:, :-1] * factor, scores[:, -1:]], dim=1)


FUSION_RULES: Dict[str, callable] = {"fvlm": fvlm_fusion, "fvit": fvit_fusion}


def fuse_scores(rule: str, p_det, p_vlm, base_mask, alpha: float, beta: float) -> torch.Tensor:
    """Apply the fusion rule named ``rule`` ("fvlm" or "fvit")."""
    if rule not in FUSION_RULES:
        raise ValueError(
            f"Unknown fusion rule {rule!r} (MODEL.OVD.FUSION.RULE); known: {sorted(FUSION_RULES)}"
        )
    return FUSION_RULES[rule](p_det, p_vlm, base_mask, alpha, beta)
