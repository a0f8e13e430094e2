import math

import pytest
import torch

from fbcompress.training.adaptive_loss import adaptive_task_weights, combine_losses


def reference_weights(losses: list[float], alpha: float = 1.0) -> list[float]:
    """The authors' rule written out by hand: nG = softmax(l)^2, w_i ∝ prod_{j≠i}(alpha*K - nG_j)."""
    k = len(losses)
    exps = [math.exp(x) for x in losses]
    ng = [(e / sum(exps)) ** 2 for e in exps]
    raw = [math.prod(alpha * k - ng[j] for j in range(k) if j != i) for i in range(k)]
    return [r / sum(raw) for r in raw]


def test_hand_computed_three_tasks():
    # softmax([0, 0, ln 2]) = [1/4, 1/4, 1/2]; nG = [1/16, 1/16, 1/4]; factors 3 - nG = [47/16, 47/16, 11/4]
    # w ∝ [47/16 * 11/4, 47/16 * 11/4, (47/16)^2] = [517/64, 517/64, 2209/256] → normalise
    weights = adaptive_task_weights(torch.tensor([0.0, 0.0, math.log(2.0)]))
    raw = [517 / 64, 517 / 64, 2209 / 256]
    expected = [r / sum(raw) for r in raw]
    assert weights.tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("losses", [[0.7, 10.3, 0.05], [1.0, 2.0], [3.0, 1.0, 0.5, 2.5, 9.0]])
def test_matches_reference_sums_to_one_positive(losses):
    weights = adaptive_task_weights(torch.tensor(losses))
    assert weights.tolist() == pytest.approx(reference_weights(losses), abs=1e-6)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert bool((weights > 0).all())


@pytest.mark.parametrize("k", [2, 3, 4, 7])
def test_larger_loss_gets_larger_weight(k):
    losses = torch.linspace(0.1, 3.0, k)
    weights = adaptive_task_weights(losses)
    assert torch.all(weights[1:] > weights[:-1]), weights


def test_weights_are_detached_and_reject_single_task():
    losses = torch.tensor([1.0, 2.0], requires_grad=True)
    assert not adaptive_task_weights(losses).requires_grad
    with pytest.raises(ValueError):
        adaptive_task_weights(torch.tensor([1.0]))


def test_combine_adaptive_and_fixed():
    losses = {"mlm": torch.tensor(2.0, requires_grad=True), "ita": torch.tensor(0.5, requires_grad=True)}
    total, weights = combine_losses(losses, "adaptive", {})
    assert weights["mlm"] > weights["ita"]
    total.backward()
    assert losses["mlm"].grad == pytest.approx(weights["mlm"])
    total, weights = combine_losses(losses, "fixed", {"mlm": 1.0, "ita": 3.0})
    assert float(total.detach()) == pytest.approx(2.0 + 1.5)
    assert weights == {"mlm": 1.0, "ita": 3.0}


def test_a_single_task_step_keeps_its_loss_whole():
    """A step where only one task has a loss (e.g. no masked patch in a tiny batch) weights it 1 under the adaptive
    rule. Breaks (mutation testing): the single-task branch renamed away (then it falls to the error), its weight
    vector None / of length 2 / empty."""
    loss = torch.tensor(1.7, requires_grad=True)
    total, weights = combine_losses({"mlm": loss}, "adaptive", {})
    assert weights == {"mlm": 1.0}
    assert float(total.detach()) == pytest.approx(1.7)


def test_weights_come_back_float32_and_errors_say_what_is_wrong():
    """The weights are solved in float64 and returned as float32 (the loss dtype). Breaks: the final cast dropped
    (float64 weights), error messages replaced by None."""
    weights = adaptive_task_weights(torch.tensor([0.3, 2.0, 1.1]))
    assert weights.dtype == torch.float32
    with pytest.raises(ValueError, match="at least 2 task losses, got shape"):
        adaptive_task_weights(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="unknown loss weighting 'uniform'"):
        combine_losses({"mlm": torch.tensor(1.0), "ita": torch.tensor(2.0)}, "uniform", {})


def test_the_total_keeps_the_losses_dtype():
    """Under bf16 autocast the task losses may come back in bfloat16: the weighted total stays in their dtype.
    Break (mutation testing): the weights' cast to the losses' dtype dropped (a float32 total)."""
    losses = {"mlm": torch.tensor(2.0, dtype=torch.bfloat16), "ita": torch.tensor(0.5, dtype=torch.bfloat16)}
    for mode, fixed in (("adaptive", {}), ("fixed", {"mlm": 1.0, "ita": 2.0})):
        total, _ = combine_losses(losses, mode, fixed)
        assert total.dtype == torch.bfloat16


def test_weights_are_the_float64_solution_rounded_once():
    """The closed form is solved in float64 and rounded to float32 once, so the weights do not depend on the
    losses' precision. Break (mutation testing): the float64 cast dropped, which moves these weights by an ulp."""
    losses = torch.tensor([2.481282949447632, 3.841109037399292, 0.4423871636390686, 0.6601524353027344])
    l64 = losses.double()
    factors = l64.numel() - torch.softmax(l64, dim=0) ** 2
    solved = torch.stack([torch.prod(torch.cat([factors[:i], factors[i + 1:]])) for i in range(4)])
    assert torch.equal(adaptive_task_weights(losses), (solved / solved.sum()).float())
