"""MT-Net's losses (Tang & Zhang 2024, section 3.2.6) as plain torch functions.

- :func:`dice_loss`, eq. (2), on probabilities;
- :func:`rank_loss`, eq. (3), on probabilities;
- :func:`seg_loss` = Dice + gamma * Rank, eq. (1), on logits (applies the sigmoid);
- :func:`bce_loss`, Class-net's binary cross-entropy, on logits.

Models return logits; the sigmoid is applied here (and in metrics), never inside the models.
Masks: ``(B, 1, H, W)`` or ``(B, H, W)`` with values 0/1 (any dtype). The losses are computed
in float32 whatever the dtype of the logits (e.g. bfloat16 under autocast).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nodulekit.errors import NodulekitError


def _flat_per_image(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, ...)`` probabilities and masks of equal shape -> ``(B, N)`` float32, ``(B, N)`` bool.

    float32 whatever the input dtype: sums over 50,176 pixels in bfloat16 (autocast) lose digits.
    """
    if probs.shape != target.shape:
        raise NodulekitError(f"prediction shape {tuple(probs.shape)} != target shape "
                             f"{tuple(target.shape)}")
    return probs.reshape(probs.shape[0], -1).float(), target.reshape(target.shape[0], -1) > 0.5


def _dice_rows(probs: torch.Tensor, target: torch.Tensor, reduction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, N) prediction and target (target in the prediction's dtype): one row per image for
    ``reduction="image"``, a single row for ``"batch"``."""
    p, g = _flat_per_image(probs, target)
    g = g.to(p.dtype)
    if reduction == "batch":
        return p.reshape(1, -1), g.reshape(1, -1)
    if reduction != "image":
        raise NodulekitError(f"dice reduction must be 'image' or 'batch', not {reduction!r}")
    return p, g


def dice_loss(probs: torch.Tensor, target: torch.Tensor, eps: float = 1.0,
              reduction: str = "image") -> torch.Tensor:
    """Soft Dice loss, MT-Net eq. (2): ``1 - 2 sum_i P_i G_i / (sum_i (P_i + G_i) + eps)``.

    Args:
        probs: ``(B, ...)`` nodule probabilities P in [0, 1].
        target: same shape, ground truth G (0/1).
        eps: the smoothing factor epsilon of eq. (2) (only in the denominator, as written).
        reduction: ``"image"``: eq. (2) per image (the sum runs over the image's N pixels), then
            the mean over the batch; ``"batch"``: one sum over all pixels of the batch.
    Returns: scalar tensor.
    """
    p, g = _dice_rows(probs, target, reduction)
    overlap = (p * g).sum(dim=1)
    total = (p + g).sum(dim=1)
    return (1.0 - 2.0 * overlap / (total + eps)).mean()


def rank_loss(probs: torch.Tensor, target: torch.Tensor, k: int = 20,
              margin: float = 0.3) -> torch.Tensor:
    """Rank loss, MT-Net eq. (3), averaged over the images of the batch.

    Per image n: the K background pixels with the highest error (highest P, the values
    H^0_{n,i}) and the K nodule pixels with the highest error (lowest P, the values H^1_{n,j})
    are selected after the forward pass (online hard-pixel mining, section 3.2.6), and

        L_n = 1/K^2 sum_i sum_j max(0, H^0_{n,i} - H^1_{n,j} + margin),

    which pushes each hard nodule pixel above each hard background pixel by ``margin``. The
    selection itself carries no gradient; the selected probabilities do.

    Where the paper is silent: an image with fewer than K pixels of a class uses all of them
    (and divides by k_bg * k_fg instead of K^2); images without any nodule or any background
    pixel have no pair and are left out of the batch mean; with no such image at all the loss
    is 0 (still connected to the graph).

    Args:
        probs: ``(B, ...)`` nodule probabilities P.
        target: same shape, ground truth (0/1).
        k: K, hard pixels per class and image (20, section 3.2.5).
        margin: required gap between hard nodule and hard background probabilities (0.3).
    Returns: scalar tensor.
    """
    p, fg = _flat_per_image(probs, target)
    k_eff = min(k, p.shape[1])
    _, bg_idx = p.masked_fill(fg, float("-inf")).topk(k_eff, dim=1)      # highest P in background
    _, fg_idx = (-p).masked_fill(~fg, float("-inf")).topk(k_eff, dim=1)  # lowest P in nodule
    h0 = p.gather(1, bg_idx)                                              # (B, K) H^0
    h1 = p.gather(1, fg_idx)                                              # (B, K) H^1
    order = torch.arange(k_eff, device=p.device)
    valid_bg = order < (~fg).sum(dim=1, keepdim=True)  # (B, K): fewer than K background pixels
    valid_fg = order < fg.sum(dim=1, keepdim=True)
    hinge = (h0[:, :, None] - h1[:, None, :] + margin).clamp(min=0)       # (B, K_bg, K_fg)
    pair_valid = (valid_bg[:, :, None] & valid_fg[:, None, :]).to(p.dtype)
    n_pairs = pair_valid.sum(dim=(1, 2))
    per_image = (hinge * pair_valid).sum(dim=(1, 2)) / n_pairs.clamp(min=1)
    has_pairs = (n_pairs > 0).to(p.dtype)
    return (per_image * has_pairs).sum() / has_pairs.sum().clamp(min=1)  # no host sync


def seg_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 0.02, k: int = 20,
             margin: float = 0.3, eps: float = 1.0, dice_reduction: str = "image") -> torch.Tensor:
    """Hybrid segmentation loss, MT-Net eq. (1): ``L_seg = L_Dice + gamma * L_Rank``.

    Used for both Coarse and Fine Seg-net (section 3.2.6); gamma = 0.02, K = 20, margin = 0.3
    (sections 3.2.5 and 4.6). ``logits``: ``(B, 1, H, W)``; ``target``: same shape, 0/1.
    """
    probs = torch.sigmoid(logits.float())
    loss = dice_loss(probs, target, eps=eps, reduction=dice_reduction)
    if gamma:
        loss = loss + gamma * rank_loss(probs, target, k=k, margin=margin)
    return loss


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of Class-net (section 3.2.4 / 3.2.6), mean over the batch.

    ``logits``: ``(B,)`` malignancy logits; ``labels``: ``(B,)``, 1 = malignant, 0 = benign.
    """
    if logits.shape != labels.shape:
        raise NodulekitError(f"logits shape {tuple(logits.shape)} != labels shape "
                             f"{tuple(labels.shape)}")
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


# -- papers 003 (MU-Net / MSU-Net) and 004 (cascade) ---------------------------------------------

def squared_dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
                      reduction: str = "image") -> torch.Tensor:
    """Dice loss with squared terms (V-Net, Milletari et al. 2016), paper 003 eq. (8) and
    paper 004 eq. (2) (which writes it as ``-Dice``; ``1 - Dice`` has the same gradient)::

        DL = 1 - (2 sum_i p_i g_i + smooth) / (sum_i p_i^2 + sum_i g_i^2 + smooth)

    Args:
        probs: ``(B, ...)`` foreground probabilities p in [0, 1].
        target: same shape, ground truth g (0/1).
        smooth: added to numerator and denominator (neither paper gives a value; with it an
            empty prediction of an empty target has DL = 0).
        reduction: ``"image"``: DL per sample (the sums run over its N voxels), then the batch
            mean; ``"batch"``: one sum over all voxels of the batch.
    Returns: scalar float32 tensor in [0, 1] (sums in float32, also under bf16 autocast).
    """
    p, g = _dice_rows(probs.float(), target, reduction)
    overlap = (p * g).sum(dim=1)
    denominator = (p * p).sum(dim=1) + (g * g).sum(dim=1)
    return (1.0 - (2.0 * overlap + smooth) / (denominator + smooth)).mean()


def focal_loss_with_logits(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
                           gamma: float = 2.0, reduction: str = "mean") -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), paper 003 eq. (9), on logits::

        FL = - sum_{g_i = 1} alpha (1 - p_i)^gamma log p_i - sum_{g_i = 0} (1 - alpha) p_i^gamma log(1 - p_i)

    ``log p`` and ``log(1 - p)`` are computed as ``logsigmoid(z)`` and ``logsigmoid(-z)``
    (stable). ``reduction``: ``"mean"`` over all voxels of the batch, or ``"sum"`` (eq. 9 as
    printed; it grows with the patch size). ``logits`` and ``target`` have equal shapes.
    """
    if logits.shape != target.shape:
        raise NodulekitError(f"logits shape {tuple(logits.shape)} != target shape {tuple(target.shape)}")
    logits = logits.float()  # float32 also under bf16 autocast
    g = (target > 0.5).to(logits.dtype)
    p = torch.sigmoid(logits)
    positive = alpha * (1.0 - p).pow(gamma) * F.logsigmoid(logits)
    negative = (1.0 - alpha) * p.pow(gamma) * F.logsigmoid(-logits)
    per_voxel = -(g * positive + (1.0 - g) * negative)
    if reduction == "mean":
        return per_voxel.mean()
    if reduction == "sum":
        return per_voxel.sum()
    raise NodulekitError(f"focal reduction must be 'mean' or 'sum', not {reduction!r}")


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax cross-entropy averaged over the samples whose label is >= 0 (-1 = no label).

    ``logits``: ``(B, C)``; ``labels``: ``(B,)`` integers in ``[-1, C)``. Returns ``(loss,
    has_label)``: ``loss`` is 0 (still attached to the graph, so every rank of a distributed run
    builds the same graph) when no sample is labelled; ``has_label`` is 1.0 or 0.0 (a tensor,
    no host sync), for averaging over the tasks that have labels.
    """
    labels = labels.reshape(-1).to(torch.long)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise NodulekitError(f"logits shape {tuple(logits.shape)} does not fit labels {tuple(labels.shape)}")
    valid = (labels >= 0).to(logits.dtype)
    per_sample = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    n_valid = valid.sum()
    return (per_sample * valid).sum() / n_valid.clamp(min=1.0), (n_valid > 0).to(logits.dtype)
