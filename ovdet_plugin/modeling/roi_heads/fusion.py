"""Score-fusion rules: the registry :data:`FUSION_RULE_REGISTRY` and the papers' three rules.

Shape convention (Detectron2's): K foreground classes, background is the LAST column (index K).
ViLD and F-VLM put background at index 0; the rules are the same with the columns moved.

**Contract of a rule** (what ``MODEL.OVD.FUSION.RULE`` names)::

    rule(det_log_probs, vlm_logits, base_mask, alpha, beta) -> scores

- ``det_log_probs``: (N, K+1) log-probabilities of the detector (log-softmax of its logits,
  background last).
- ``vlm_logits``: (N, K+1) VLM logits: the temperature-scaled cosine similarities of the VLM
  region embeddings with the K class rows and the background row (background last). Each rule
  turns them into probabilities as its paper does (softmax with or without background).
- ``base_mask``: (K,) bool, True for base classes (trained with boxes), False for novel ones.
- ``alpha``, ``beta``: the VLM weights for base / novel classes.
- returns (N, K+1) float32 scores; Detectron2's ``fast_rcnn_inference`` drops the last column.

Rules combine in log space: a geometric mean ``p_det^(1-w) p_vlm^w`` is
``exp((1-w) log p_det + w log p_vlm)`` and a renormalisation is a ``logsumexp``. That is exact
where multiplying probabilities underflows (peaked rows; fp16/bf16 under autocast: everything
here runs in float32).

Register a new rule from anywhere::

    from ovdet_plugin.modeling.roi_heads.fusion import FUSION_RULE_REGISTRY

    @FUSION_RULE_REGISTRY.register()
    def my_rule(det_log_probs, vlm_logits, base_mask, alpha, beta):
        ...

and select it with ``MODEL.OVD.FUSION.RULE: "my_rule"``. The papers' values of alpha and beta
live in ``config.py`` (``MODEL.OVD.FUSION``) and the paper configs, not here.
"""

import torch
import torch.nn.functional as F
from detectron2.utils.registry import Registry

__all__ = [
    "FUSION_RULE_REGISTRY",
    "get_fusion_rule",
    "fvlm",
    "fvit",
    "vild_ensemble",
    "objectness_weighting",
]

FUSION_RULE_REGISTRY = Registry("OVD_FUSION_RULE")
FUSION_RULE_REGISTRY.__doc__ = """
Test-time score-fusion rules, by name (``MODEL.OVD.FUSION.RULE``). A rule is a function
``(det_log_probs (N, K+1), vlm_logits (N, K+1), base_mask (K,), alpha, beta) -> (N, K+1)``
scores, background last; see :mod:`ovdet_plugin.modeling.roi_heads.fusion`.
"""


def get_fusion_rule(name: str):
    """The rule registered as ``name``; an unknown name lists the known ones."""
    if name not in FUSION_RULE_REGISTRY:
        known = sorted(n for n, _ in FUSION_RULE_REGISTRY)
        raise ValueError(
            f"Unknown fusion rule {name!r} (MODEL.OVD.FUSION.RULE); known: {known}. A rule of "
            "your own must be registered in FUSION_RULE_REGISTRY before the model is built."
        )
    return FUSION_RULE_REGISTRY.get(name)


def _column_weights(base_mask: torch.Tensor, alpha: float, beta: float, like: torch.Tensor):
    """(K,) VLM weight per foreground class: alpha for base, beta for novel."""
    mask = base_mask.to(device=like.device, dtype=torch.bool)
    return torch.where(mask, like.new_tensor(float(alpha)), like.new_tensor(float(beta)))


def _geometric(log_det: torch.Tensor, log_vlm: torch.Tensor, weight: torch.Tensor):
    """log of p_det^(1-w) * p_vlm^w, elementwise; w broadcasts over columns."""
    return (1.0 - weight) * log_det + weight * log_vlm


@FUSION_RULE_REGISTRY.register()
def fvlm(det_log_probs, vlm_logits, base_mask, alpha, beta) -> torch.Tensor:
    """F-VLM (Kuo et al. 2023, Sec. 3.3; fvlm/modeling/task_heads.py ``ensemble_class_outputs``).

    p_vlm = softmax over the K+1 VLM logits. Foreground: base p_det^(1-alpha) p_vlm^alpha, novel
    p_det^(1-beta) p_vlm^beta. The background probability is the detector's; the whole row is
    then renormalised to sum to 1 (a logsumexp here).
    """
    log_det = det_log_probs.float()
    log_vlm = F.log_softmax(vlm_logits.float(), dim=1)
    k = log_det.shape[1] - 1
    w = _column_weights(base_mask, alpha, beta, log_det)
    fused = torch.cat([_geometric(log_det[:, :k], log_vlm[:, :k], w), log_det[:, k:]], dim=1)
    return (fused - torch.logsumexp(fused, dim=1, keepdim=True)).exp()


@FUSION_RULE_REGISTRY.register()
def fvit(det_log_probs, vlm_logits, base_mask, alpha, beta) -> torch.Tensor:
    """F-ViT / CLIPSelf (Wu et al. 2024; F-ViT/models/fvit_head.py).

    p_vlm = softmax over the K+1 VLM logits. Base classes AND background:
    p_det^(1-alpha) p_vlm^alpha; novel: p_det^(1-beta) p_vlm^beta. No renormalisation.
    """
    log_det = det_log_probs.float()
    log_vlm = F.log_softmax(vlm_logits.float(), dim=1)
    w = _column_weights(base_mask, alpha, beta, log_det)
    w = torch.cat([w, w.new_tensor([float(alpha)])])
    return _geometric(log_det, log_vlm, w).exp()


@FUSION_RULE_REGISTRY.register()
def vild_ensemble(det_log_probs, vlm_logits, base_mask, alpha, beta) -> torch.Tensor:
    """ViLD-ensemble (Gu et al. 2022, Sec. 3.4; vild ops/postprocess_ops.py).

    The VLM side is ViLD's image branch: p_image = softmax over the K class logits only (its
    background logit is dropped). base: p_text^(1-alpha) p_image^alpha, novel:
    p_text^(1-beta) p_image^beta; ViLD's lambda = 2/3 is alpha = 1/3, beta = 2/3. Nothing is
    renormalised; the background column is p_text's (Detectron2's inference ignores it).
    """
    log_det = det_log_probs.float()
    k = log_det.shape[1] - 1
    log_image = F.log_softmax(vlm_logits[:, :k].float(), dim=1)
    w = _column_weights(base_mask, alpha, beta, log_det)
    fused = torch.cat([_geometric(log_det[:, :k], log_image, w), log_det[:, k:]], dim=1)
    return fused.exp()


def objectness_weighting(scores: torch.Tensor, objectness_logits: torch.Tensor, power: float):
    """Multiply the foreground scores by sigmoid(objectness)^power (F-VLM ``objectness_weight``,
    fvlm/modeling/task_heads.py; DITO/RO-ViT use the centerness RPN's score with power 3,
    fvlm/dito/configs/dito_train_and_eval.gin).

    Args:
        scores: (N, K+1); objectness_logits: (N,).
    Returns:
        (N, K+1) with the K foreground columns reweighted (background unchanged).
    """
    if power == 0:
        return scores
    factor = torch.sigmoid(objectness_logits.float()).pow(power).unsqueeze(1)
    return torch.cat([scores[:, :-1] * factor, scores[:, -1:]], dim=1)
