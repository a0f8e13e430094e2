"""FashionBERT's adaptive loss: the task weights are re-solved in closed form at every step.

The rule follows the authors' released code: with K task losses l_1..l_K,

    nG = softmax(l)²                      (a normalised "gradient size" per task)
    w_i ∝ ∏_{j≠i} (αK − nG_j)              then normalised so that Σ w_i = 1, with α = 1.

Since every factor αK − nG_j is positive (nG_j ≤ 1 < K), every weight is positive; a task whose loss is larger
has a larger nG, which shrinks the weights of the *other* tasks, so the lagging task gets the larger share. The
weights are detached: they steer the optimiser, they are not themselves optimised.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def adaptive_task_weights(losses: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Weights [K] (sum 1, all > 0) for a vector of K ≥ 2 current task losses; no gradient flows through them."""
    if losses.dim() != 1 or losses.numel() < 2:
        raise ValueError(f"need a vector of at least 2 task losses, got shape {tuple(losses.shape)}")
    losses = losses.detach().to(torch.float64)
    k = losses.numel()
    ng = torch.softmax(losses, dim=0) ** 2
    factors = alpha * k - ng  # [K]
    weights = torch.stack([torch.prod(torch.cat([factors[:i], factors[i + 1:]])) for i in range(k)])
    return (weights / weights.sum()).to(torch.float32)


def combine_losses(
    losses: Mapping[str, torch.Tensor], mode: str, fixed: Mapping[str, float]
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of the task losses present this step, and the weights used (for the log).

    `adaptive` solves the weights from the current losses; `fixed` uses the recipe's hand-set weights (the
    ablation baseline). A task absent this step (e.g. no masked patch in a tiny batch) simply drops out.
    """
    names = list(losses)
    stacked = torch.stack([losses[name] for name in names])
    if mode == "adaptive" and len(names) >= 2:
        weights = adaptive_task_weights(stacked).to(stacked.device)
    elif mode == "adaptive":
        weights = torch.ones(1, device=stacked.device)
    elif mode == "fixed":
        weights = torch.tensor([float(fixed[name]) for name in names], device=stacked.device)
    else:
        raise ValueError(f"unknown loss weighting {mode!r}")
    total = (weights.to(stacked.dtype) * stacked).sum()
    return total, {name: float(w) for name, w in zip(names, weights.tolist(), strict=True)}
