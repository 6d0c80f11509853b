"""The DPO-family losses against their closed forms (no model involved)."""

from __future__ import annotations

import math

import pytest
import torch

from plumb.train import losses


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def test_dpo_sigmoid_matches_closed_form_worked_example():
    # The seed's worked example: policy raised chosen (-1.2 -> -1.0) and lowered rejected (-1.5 -> -2.0).
    loss, rc, rr = losses.dpo_loss(t(-1.0), t(-2.0), t(-1.2), t(-1.5), beta=0.1)
    logits = 0.1 * ((-1.0 + 1.2) - (-2.0 + 1.5))  # 0.07
    assert loss.item() == pytest.approx(math.log1p(math.exp(-logits)), abs=1e-12)
    assert loss.item() == pytest.approx(0.6587, abs=1e-4)
    assert rc.item() == pytest.approx(0.02, abs=1e-12) and rr.item() == pytest.approx(-0.05, abs=1e-12)


def test_dpo_gradient_weight_matches_seed_mock_calculation():
    # pi(y_w) = pi_ref(y_w) = 0.1; pi(y_l) = 0.2, pi_ref(y_l) = 0.1; beta = 1 -> u = -ln 2,
    # sigma(u) = 1/3, loss = ln 3, dloss/du = -(1 - sigma(u)) = -2/3.
    pw = torch.tensor([math.log(0.1)], dtype=torch.float64, requires_grad=True)
    loss, _, _ = losses.dpo_loss(pw, t(math.log(0.2)), t(math.log(0.1)), t(math.log(0.1)), beta=1.0)
    loss.sum().backward()
    assert loss.item() == pytest.approx(math.log(3), abs=1e-6)
    assert pw.grad.item() == pytest.approx(-2 / 3, abs=1e-6)


def test_dpo_at_init_is_ln2_and_batch_mean():
    same = t(-3.0, -7.0)
    loss, rc, rr = losses.dpo_loss(same, t(-5.0, -1.0), same, t(-5.0, -1.0))
    assert torch.allclose(loss, torch.full((2,), math.log(2), dtype=torch.float64), atol=1e-12)
    assert rc.abs().sum() == 0 and rr.abs().sum() == 0


def test_label_smoothing_cdpo_and_robust():
    args = (t(-1.0), t(-2.0), t(-1.2), t(-1.5))
    h = 0.1 * 0.7
    plain = losses.dpo_loss(*args, beta=0.1)[0]
    assert losses.dpo_loss(*args, beta=0.1, label_smoothing=0.0)[0].item() == pytest.approx(plain.item())
    eps = 0.2
    cdpo = losses.dpo_loss(*args, beta=0.1, label_smoothing=eps)[0].item()
    sp = lambda x: math.log1p(math.exp(-x))  # -log sigma(x)
    assert cdpo == pytest.approx((1 - eps) * sp(h) + eps * sp(-h), abs=1e-12)
    # eps = 0.5: no preference at all, symmetric in the margin
    flip = (t(-2.0), t(-1.0), t(-1.5), t(-1.2))
    assert losses.dpo_loss(*args, beta=0.1, label_smoothing=0.5)[0].item() == pytest.approx(
        losses.dpo_loss(*flip, beta=0.1, label_smoothing=0.5)[0].item(), abs=1e-12)
    robust = losses.dpo_loss(*args, beta=0.1, loss_type="robust", label_smoothing=eps)[0].item()
    assert robust == pytest.approx(((1 - eps) * sp(h) - eps * sp(-h)) / (1 - 2 * eps), abs=1e-12)


def test_ipo_and_hinge_closed_forms():
    args = (t(-1.0), t(-2.0), t(-1.2), t(-1.5))
    h = 0.7
    assert losses.dpo_loss(*args, beta=0.1, loss_type="ipo")[0].item() == pytest.approx((h - 5.0) ** 2)
    assert losses.dpo_loss(*args, beta=0.1, loss_type="hinge")[0].item() == pytest.approx(1 - 0.07)
    assert losses.dpo_loss(*args, beta=2.0, loss_type="hinge")[0].item() == 0.0  # margin met: no loss
    with pytest.raises(ValueError):
        losses.dpo_loss(*args, loss_type="nope")


def test_kto_kl_is_clamped_and_detached():
    pk = torch.tensor([-3.0, -4.0], requires_grad=True)
    kl = losses.kto_kl(pk, torch.tensor([-2.0, -2.0]))  # policy below reference: mean ratio -1.5
    assert kl.item() == 0.0 and not kl.requires_grad
    assert losses.kto_kl(torch.tensor([-1.0]), torch.tensor([-3.0])).item() == pytest.approx(2.0)


def test_kto_loss_closed_form_and_weights():
    policy = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -3.5], dtype=torch.float64)
    good = torch.tensor([True, False, True])
    kl = torch.tensor(0.2, dtype=torch.float64)
    out, rc, rr = losses.kto_loss(policy, ref, good, kl, beta=0.5, desirable_weight=2.0, undesirable_weight=1.0)
    s = lambda x: 1 / (1 + math.exp(-x))
    expected = [2 * (1 - s(0.5 * (0.5 - 0.2))), 2 * (1 - s(0.5 * (0.5 - 0.2))), 1 - s(0.5 * (0.2 - -1.0))]
    assert out.tolist() == pytest.approx(expected, abs=1e-12)
    assert rc.tolist() == pytest.approx([0.25, 0.25]) and rr.tolist() == pytest.approx([-0.5])


def test_orpo_log_odds_closed_form():
    c, r = t(math.log(0.5)), t(math.log(0.2))
    out, rc, rr, log_odds = losses.orpo_loss(c, r, beta=0.1)
    odds = lambda p: p / (1 - p)
    assert log_odds.item() == pytest.approx(math.log(odds(0.5) / odds(0.2)), abs=1e-12)  # log 4
    assert out.item() == pytest.approx(-0.1 * math.log(1 / (1 + math.exp(-math.log(4)))), abs=1e-12)
    assert rc.item() == pytest.approx(0.1 * math.log(0.5))


def test_sft_loss_is_mean_nll():
    assert losses.sft_loss(t(-1.0, -2.0, -3.0)).item() == pytest.approx(2.0)


def test_sft_content_weight_puts_the_loss_on_each_answers_end():
    tok = t(-1.0, -2.0, -3.0, -4.0, -5.0)  # two answers: tokens 0-2 (ends at -3) and 3-4 (ends at -5)
    owner = torch.tensor([0, 0, 0, 1, 1])
    assert losses.sft_loss(tok, owner, 1.0).item() == pytest.approx(3.0)  # the plain mean
    # ends weigh 1, the rest 0.1: (0.1*(1+2+4) + 3 + 5) / (0.1*3 + 2)
    assert losses.sft_loss(tok, owner, 0.1).item() == pytest.approx((0.7 + 8) / 2.3)
    tok.requires_grad_(True)
    losses.sft_loss(tok, owner, 0.1).backward()
    assert tok.grad[2] == pytest.approx(10 * tok.grad[0]) and tok.grad[4] == pytest.approx(10 * tok.grad[3])


def test_sft_anchor_adds_the_kl_of_the_words_before_each_end():
    tok = t(-1.0, -2.0, -3.0, -4.0, -5.0)
    owner = torch.tensor([0, 0, 0, 1, 1])
    kl = t(0.5, 1.0, 9.0, 2.0, 9.0)  # an answer's last token's KL (9) is left out: only the end moves freely
    # (0.1*(1+2+4) + 3 + 5 + 2*(0.5+1+2)) / (0.1*3 + 2): the same weights in the mean
    assert losses.sft_loss(tok, owner, 0.1, kl, 2.0).item() == pytest.approx((0.7 + 8 + 7) / 2.3)
    assert losses.sft_loss(tok, owner, 0.1, kl, 0.0).item() == pytest.approx((0.7 + 8) / 2.3)
    kl.requires_grad_(True)
    losses.sft_loss(tok, owner, 0.1, kl, 2.0).backward()
    assert kl.grad[2] == 0 and kl.grad[4] == 0 and kl.grad[0] == pytest.approx(2.0 / 2.3)
