"""The losses of the DPO family, as pure functions on log-probabilities.

No model, no batch layout: each function takes per-sequence (or per-token)
log-probs as tensors and returns per-example losses plus the implicit rewards
that TRL logs, so each can be checked against its closed form in isolation.
Formulas follow TRL (``trl/trainer/dpo_trainer.py``, ``kto_trainer.py``,
``orpo_trainer.py``) so the numbers compare one to one.

Conventions: ``*_logps`` are summed log-probs of the completion tokens (IPO and
ORPO take length-normalized ones: the caller divides by the token count, as TRL
does); ``beta`` is the DPO temperature (the KL leash), or lambda for ORPO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAIRED_LOSSES = ("sigmoid", "robust", "hinge", "ipo")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards ``beta * log(pi / pi_ref)``.

    * ``sigmoid``: ``-log sigma(beta * h)`` with ``h`` the difference of the
      chosen and rejected log-ratios (DPO). With ``label_smoothing = eps`` it is
      conservative DPO (cDPO): ``-(1-eps) log sigma(beta h) - eps log sigma(-beta h)``.
    * ``robust``: the unbiased robust-DPO estimator,
      ``[-(1-eps) log sigma(beta h) + eps log sigma(-beta h)] / (1 - 2 eps)``.
    * ``hinge``: SLiC, ``relu(1 - beta h)``.
    * ``ipo``: ``(h - 1/(2 beta))^2`` on length-normalized log-ratios.
    """
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h) * (1 - label_smoothing) - F.logsigmoid(-beta * h) * label_smoothing
    elif loss_type == "robust":
        if not 0 <= label_smoothing < 0.5:
            raise ValueError("robust DPO needs 0 <= label_smoothing < 0.5")
        losses = (
            -(1 - label_smoothing) * F.logsigmoid(beta * h) + label_smoothing * F.logsigmoid(-beta * h)
        ) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {PAIRED_LOSSES}")
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def kto_kl(policy_kl: torch.Tensor, ref_kl: torch.Tensor) -> torch.Tensor:
    """KTO's reference point: the mean log-ratio on *mismatched* (prompt, completion)
    pairs, clamped at 0 and detached (no gradient flows through it)."""
    return (policy_kl - ref_kl).mean().clamp(min=0).detach()


def kto_loss(
    policy: torch.Tensor,
    ref: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """KTO (Eq. 7 of the paper, as in TRL) on unpaired completions.

    ``desirable`` is a bool tensor. Good completions lose ``1 - sigma(beta (r - kl))``,
    bad ones ``1 - sigma(beta (kl - r))`` with ``r`` the log-ratio. Returns the
    weighted losses (good first, then bad) and the rewards of each group.
    """
    logratios = policy - ref
    good, bad = logratios[desirable], logratios[~desirable]
    good_losses = 1 - torch.sigmoid(beta * (good - kl))
    bad_losses = 1 - torch.sigmoid(beta * (kl - bad))
    losses = torch.cat((desirable_weight * good_losses, undesirable_weight * bad_losses))
    return losses, beta * good.detach(), beta * bad.detach()


def orpo_loss(
    chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, beta: float = 0.1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ORPO's odds-ratio term on length-normalized log-probs (no reference).

    ``log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r))``; the per-pair loss is
    ``-beta * log sigma(log_odds)`` and is added to the NLL of the chosen answer.
    Returns (losses, chosen rewards ``beta * c``, rejected rewards, log_odds).
    """
    log_odds = (chosen_mean - rejected_mean) - (
        torch.log1p(-torch.exp(chosen_mean)) - torch.log1p(-torch.exp(rejected_mean))
    )
    losses = -beta * F.logsigmoid(log_odds)
    return losses, beta * chosen_mean.detach(), beta * rejected_mean.detach(), log_odds.detach()


def sft_loss(token_logps: torch.Tensor, owner: torch.Tensor | None = None,
             content_weight: float = 1.0, kl: torch.Tensor | None = None, anchor: float = 0.0) -> torch.Tensor:
    """Weighted mean negative log-likelihood over the answer tokens of a batch (prompt and
    padding are already left out by the caller; ``owner`` says which row each token is of).
    Each answer's last token (the end of answer) weighs 1, the tokens before it
    ``content_weight``: below 1 the loss is mostly about where the answer stops. With ``kl``
    (per token, ``KL(reference || policy)``) each token before an answer's last adds
    ``anchor * kl``, so the words stay the reference's while the end moves; the mean is over
    the same weights either way."""
    if owner is None or (content_weight == 1.0 and kl is None):
        return -token_logps.mean()
    last = torch.ones_like(owner, dtype=torch.bool)
    last[:-1] = owner[1:] != owner[:-1]
    weights = torch.where(last, 1.0, content_weight).to(token_logps.dtype)
    per = -weights * token_logps
    if kl is not None and anchor:
        per = per + torch.where(last, 0.0, anchor * kl)
    return per.sum() / weights.sum()
