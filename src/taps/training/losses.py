"""Drafter training objectives: EAGLE (feature regression + token cross-entropy) and HASS top-K distillation.

Position t of a training sequence feeds the drafter the pair (target feature f_t, token x_{t+1}) and
asks for f_{t+1}; the token target is the target's own next-token distribution at t+1,
softmax(head(f_{t+1})). Both distributions are taken over the draft vocabulary: renormalising the
target's distribution over a subset equals a softmax over that subset's logits, so the full LM
head is never needed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossWeights:
    regression: float = 1.0  # EAGLE's v_w
    classification: float = 0.1  # EAGLE's p_w
    topk: float = 0.0  # HASS harmonized objective distillation (0 = plain EAGLE)
    k: int = 10


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum() / mask.sum().clamp(min=1)


def regression_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 between predicted and true next features, averaged over masked positions."""
    per_pos = F.smooth_l1_loss(pred.float(), target.float(), reduction="none").mean(-1)
    return _masked_mean(per_pos, mask)


def classification_loss(
    draft_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Cross-entropy of the drafter's token distribution against the target's (soft labels)."""
    p = torch.softmax(target_logits.float(), -1)
    return _masked_mean(-(p * torch.log_softmax(draft_logits.float(), -1)).sum(-1), mask)


def topk_loss(
    draft_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor, k: int
) -> torch.Tensor:
    """HASS: the cross-entropy restricted to the target's top-k tokens, where drafting decisions are made."""
    p = torch.softmax(target_logits.float(), -1)
    top_p, top_i = p.topk(min(k, p.shape[-1]), dim=-1)
    logq = torch.log_softmax(draft_logits.float(), -1).gather(-1, top_i)
    return _masked_mean(-(top_p * logq).sum(-1), mask)


def drafter_loss(
    pred, target_feat, draft_logits, target_logits, mask, w: LossWeights
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total and its parts (for logs)."""
    parts = {
        "regression": regression_loss(pred, target_feat, mask),
        "classification": classification_loss(draft_logits, target_logits, mask),
    }
    total = w.regression * parts["regression"] + w.classification * parts["classification"]
    if w.topk > 0:
        parts["topk"] = topk_loss(draft_logits, target_logits, mask, w.k)
        total = total + w.topk * parts["topk"]
    return total, {k: float(v.detach()) for k, v in parts.items()}


def top1_accuracy(draft_logits: torch.Tensor, target_logits: torch.Tensor, mask: torch.Tensor) -> float:
    """How often the drafter's first choice is the target's: the acceptance rate of a depth-1 chain."""
    hits = (draft_logits.argmax(-1) == target_logits.argmax(-1)).float()
    return float(_masked_mean(hits, mask))
