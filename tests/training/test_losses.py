import math

import pytest
import torch

from taps.training.losses import (
    LossWeights,
    classification_loss,
    drafter_loss,
    regression_loss,
    top1_accuracy,
    topk_loss,
)
from taps.training.trainer import alignment_mask, resolve_mixed_precision


def test_regression_is_masked_smooth_l1():
    pred = torch.tensor([[[0.0, 0.0], [3.0, 0.0]]])
    target = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]])
    # smooth-L1 per element: 0.5*0.5^2 = 0.125 ; |3| - 0.5 = 2.5
    assert regression_loss(pred, target, torch.tensor([[1.0, 0.0]])) == pytest.approx(0.125 / 2)
    assert regression_loss(pred, target, torch.tensor([[1.0, 1.0]])) == pytest.approx(
        (0.125 / 2 + 2.5 / 2) / 2
    )


def test_classification_is_soft_cross_entropy():
    draft = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    target = torch.log(torch.tensor([[[1.0, 1e-30, 1e-30]]]))
    assert classification_loss(draft, target, torch.ones(1, 1)) == pytest.approx(math.log(2), abs=1e-5)


def test_topk_ignores_tokens_outside_the_targets_top_k():
    target = torch.log(torch.tensor([[[0.6, 0.3, 0.1]]]))
    draft = torch.log(torch.tensor([[[0.2, 0.2, 0.6]]]))
    expected = -(0.6 * math.log(0.2) + 0.3 * math.log(0.2))
    assert topk_loss(draft, target, torch.ones(1, 1), k=2) == pytest.approx(expected, rel=1e-5)
    total, parts = drafter_loss(
        torch.zeros(1, 1, 2),
        torch.zeros(1, 1, 2),
        draft,
        target,
        torch.ones(1, 1),
        LossWeights(topk=2.0, k=2),
    )
    assert float(total) == pytest.approx(0.1 * parts["classification"] + 2.0 * expected, rel=1e-5)


def test_top1_accuracy():
    draft = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert top1_accuracy(draft, target, torch.ones(1, 2)) == 0.5


def test_alignment_mask_reproduces_draft_depth_visibility():
    n = 4
    m = alignment_mask(n, 3)
    # step 3, position 3: step-1 keys at s <= 1, step-2 key at s = 2, step-3 key at s = 3
    row = m[2 * n + 3]
    assert row[:n].tolist() == [True, True, False, False]
    assert row[n : 2 * n].tolist() == [False, False, True, False]
    assert row[2 * n :].tolist() == [False, False, False, True]
    assert alignment_mask(n, 1) == "causal"
    # step 1 block equals plain causal attention
    assert torch.equal(m[:n, :n], torch.ones(n, n, dtype=torch.bool).tril()) and not m[:n, n:].any()


@pytest.mark.parametrize(
    "flags, expected", [(set(), "no"), ({"avx2"}, "no"), ({"avx512_bf16"}, "bf16"), ({"amx_bf16"}, "bf16")]
)
def test_auto_mixed_precision_uses_bf16_only_where_it_is_native(monkeypatch, flags, expected):
    import taps.device

    monkeypatch.setattr(taps.device, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_mixed_precision("auto") == expected
    assert resolve_mixed_precision("no") == "no" and resolve_mixed_precision("bf16") == "bf16"
