"""Image-text contrastive losses: RO-ViT's focal contrastive loss (methods §4.2) and CLIP's
softmax cross-entropy, a multi-positive softmax for repeated captions, plus the cross-rank
gathering they use under DDP."""

import hashlib
from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = [
    "caption_ids",
    "focal_contrastive_loss",
    "gather_features",
    "gather_ids",
    "multipositive_softmax_loss",
    "sigmoid_focal_matrix_loss",
    "softmax_contrastive_loss",
]


def sigmoid_focal_matrix_loss(
    logits: torch.Tensor,
    *,
    alpha: float = 0.5,
    gamma: float = 1.0,
    normalizer: Optional[float] = None,
) -> torch.Tensor:
    """Sigmoid focal loss over a (B, B) logit matrix whose diagonal holds the positives.

    fvlm/rovit ``compute_focal_contrastive_loss`` (methods §4.2): with ``p = sigmoid(x)`` and
    ``y`` the diagonal one-hot, every entry costs ``BCE(x, y) * m * 2w`` with
    ``m = (1 - p)^gamma`` for positives, ``p^gamma`` for negatives, and ``w = alpha`` for
    positives, ``1 - alpha`` for negatives; the entries are summed, then divided by
    ``normalizer`` when given. With ``alpha = 0.5`` and ``gamma = 0`` it is the summed sigmoid BCE.

    Args:
        logits: (B, B) scaled similarities (row i = image i against every text, or transposed).
        normalizer: optional ``loss_normalizing_factor``.
    Returns:
        scalar loss.
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"Expected a square (B, B) logit matrix, got {tuple(logits.shape)}.")
    x = logits.float()
    y = torch.eye(x.shape[0], device=x.device, dtype=x.dtype)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p = torch.sigmoid(x)
    # modulating factor m: (1-p)^gamma on positives, p^gamma on negatives (methods §4.2)
    p_t = p * y + (1 - p) * (1 - y)  # probability of the correct label
    m = (1 - p_t) ** gamma
    # class weight w: alpha on positives, 1-alpha on negatives; the loss carries 2w (methods §4.2)
    w = alpha * y + (1 - alpha) * (1 - y)
    loss = (bce * m * 2 * w).sum()
    if normalizer is not None:
        loss = loss / normalizer
    return loss


def focal_contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: Optional[torch.Tensor] = None,
    *,
    alpha: float = 0.5,
    gamma: float = 1.0,
    normalizer: Optional[float] = None,
) -> torch.Tensor:
    """RO-ViT focal contrastive loss in both directions (methods §4.2).

    The image-to-text matrix ``L = scale * I @ T^T (+ bias)`` and the text-to-image matrix
    ``L^T`` each get :func:`sigmoid_focal_matrix_loss`; the result is their mean. (The loss is
    element-wise, so both directions give the same value; the mean keeps the loss on the scale of
    one direction and makes the "both directions" of the paper explicit.)

    Args:
        image_features, text_features: (B, D) L2-normalised embeddings (row i of each is a pair).
        logit_scale: scalar multiplier (already exponentiated).
        logit_bias: optional scalar added to every logit (SigLIP-style models).
    Returns:
        scalar loss.
    """
    logits = logit_scale * image_features @ text_features.t()
    if logit_bias is not None:
        logits = logits + logit_bias
    kw = dict(alpha=alpha, gamma=gamma, normalizer=normalizer)
    i2t = sigmoid_focal_matrix_loss(logits, **kw)
    t2i = sigmoid_focal_matrix_loss(logits.t(), **kw)
    return 0.5 * (i2t + t2i)


def softmax_contrastive_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric softmax cross-entropy (the baseline RO-ViT's focal loss replaces).

    Args:
        image_features, text_features: (B, D) L2-normalised embeddings.
        logit_scale: scalar multiplier (already exponentiated).
    Returns:
        mean over the two directions of the mean cross-entropy against the diagonal.
    """
    logits = logit_scale * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def multipositive_softmax_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    caption_ids: torch.Tensor,
) -> torch.Tensor:
    """Softmax contrastive loss for batches with repeated captions: the target of row i spreads
    evenly over every j whose caption equals i's, instead of the diagonal alone (equal to
    :func:`softmax_contrastive_loss` when all captions differ). Not in the papers (RO-ViT and CLIP
    assume unique captions); ``MODEL.OVD.ROVIT.LOSS "multipos"``, for caption sets where a batch
    holds the same caption several times (short captions, few classes, the generated data), where
    the plain softmax would push an image away from its own, repeated, caption.

    Args:
        image_features, text_features: (B, D) L2-normalised embeddings.
        logit_scale: scalar multiplier (already exponentiated).
        caption_ids: (B,) integer id of each pair's caption string.
    Returns:
        mean over the two directions of the mean soft-target cross-entropy.
    """
    logits = logit_scale * image_features @ text_features.t()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    t2i = -(target * F.log_softmax(logits.t(), dim=1)).sum(dim=1).mean()
    return 0.5 * (i2t + t2i)


def _several_processes() -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_features(
    image_features: torch.Tensor, text_features: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Concatenate the features of every DDP rank (rank order), keeping the local gradient.

    Uses ``torch.distributed.nn.all_gather`` (autograd-aware), so every rank computes the loss of
    the global batch; DDP's gradient averaging then yields the gradient of that global loss
    (open_clip's ``gather_with_grad=True, local_loss=False``). Identity without a process group.
    """
    if not _several_processes():
        return image_features, text_features
    from torch.distributed.nn import all_gather

    return torch.cat(all_gather(image_features), 0), torch.cat(all_gather(text_features), 0)


def caption_ids(captions: Sequence[str], device=None) -> torch.Tensor:
    """(B,) int64 id of each caption string, equal exactly when the (whitespace-normalised,
    lower-cased) strings are equal, and the same on every process (a hash, not an index), so ids
    gathered from several DDP ranks can be compared."""
    ids = []
    for text in captions:
        key = " ".join(str(text).lower().split()).encode("utf-8")
        ids.append(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
    return torch.tensor(ids, dtype=torch.int64, device=device)


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Concatenate an integer tensor of every DDP rank (rank order); identity on one process."""
    if not _several_processes():
        return ids
    parts = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, ids)
    return torch.cat(parts, 0)
