"""Sequence log-probs over answer tokens, without building ``[batch, seq, vocab]`` logits.

``completion_logps`` runs the decoder, picks the positions that predict an
answer token (``batch["src"]``, from ``data.collate``/``collate_shared``) and
sends only those through the LM head; ``HeadLogps`` does that in row chunks and
recomputes each chunk's logits in backward instead of keeping them. The sums
equal TRL's shifted, masked log-softmax (tests check it against autograd).
"""

from __future__ import annotations

from typing import Any

import torch


def _plain_head(base) -> bool:
    c = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    head = base.get_output_embeddings()
    return (all(getattr(c, k, None) in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale"))
            and isinstance(head, torch.nn.Linear) and head.bias is None and not head.weight.requires_grad)


class HeadLogps(torch.autograd.Function):
    """``log_softmax(hidden @ W.T)[label]`` for a frozen LM head ``W``, in row chunks.

    The ``[rows, vocab]`` logits are never kept for backward: the backward pass
    recomputes each chunk's logits (one extra head matmul) and applies
    ``d logp / d logits = onehot(label) - softmax``. With a 49k vocabulary that is
    the difference between ~0.2 GB and ~1 GB of float32 per step for 4 pairs."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, weight, labels, chunk: int = 512):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for i in range(0, hidden.shape[0], chunk):
            logits = (hidden[i:i + chunk] @ weight.T).float()
            out[i:i + chunk] = logits.gather(-1, labels[i:i + chunk, None]).squeeze(-1) - logits.logsumexp(-1)
        ctx.save_for_backward(hidden, weight, labels)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad):
        hidden, weight, labels = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        for i in range(0, hidden.shape[0], ctx.chunk):
            g = grad[i:i + ctx.chunk, None].float()
            dlogits = (hidden[i:i + ctx.chunk] @ weight.T).float().softmax(-1).mul_(-g)
            dlogits.scatter_add_(-1, labels[i:i + ctx.chunk, None], g)
            grad_hidden[i:i + ctx.chunk] = dlogits.to(weight.dtype) @ weight
        return grad_hidden, None, None, None


class HeadLogpsKL(torch.autograd.Function):
    """``HeadLogps`` plus, per row, ``KL(ref || policy)`` over the whole vocabulary, where the
    reference's distribution comes from ``ref_hidden`` (no gradient) through the same head.

    Forward KL to a frozen reference is self-distillation: it pulls every word's probability at
    that position back toward the reference's, not only the word in the data. Both chunks of
    logits are recomputed in backward: ``d/d logits`` is ``onehot - p`` for the log-prob and
    ``p - q`` for the KL (``p`` the policy's softmax, ``q`` the reference's)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, ref_hidden, weight, labels, chunk: int = 256):  # two [chunk, vocab] at a time
        tok = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        kl = torch.empty_like(tok)
        for i in range(0, hidden.shape[0], chunk):
            lp = (hidden[i:i + chunk] @ weight.T).float().log_softmax(-1)
            lq = (ref_hidden[i:i + chunk] @ weight.T).float().log_softmax(-1)
            tok[i:i + chunk] = lp.gather(-1, labels[i:i + chunk, None]).squeeze(-1)
            kl[i:i + chunk] = (lq.exp() * (lq - lp)).sum(-1)
        ctx.save_for_backward(hidden, ref_hidden, weight, labels)
        ctx.chunk = chunk
        return tok, kl

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_tok, grad_kl):
        hidden, ref_hidden, weight, labels = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        for i in range(0, hidden.shape[0], ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            g, gk = grad_tok[rows, None].float(), grad_kl[rows, None].float()
            p = (hidden[rows] @ weight.T).float().softmax(-1)
            q = (ref_hidden[rows] @ weight.T).float().softmax(-1)
            dlogits = p.mul_(gk - g).sub_(q.mul_(gk))
            dlogits.scatter_add_(-1, labels[rows, None], g)
            grad_hidden[rows] = dlogits.to(weight.dtype) @ weight
        return grad_hidden, None, None, None, None


def completion_logps(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed log-probs per row, answer tokens per row, per-token log-probs, the row
    of each token). Only the positions that predict an answer token (``batch["src"]``)
    reach the LM head; the ``[batch, seq, vocab]`` logits are never built."""
    base = model.get_base_model()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    src, labels, owner = batch["src"], batch["labels"], batch["owner"]
    if _plain_head(base):
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
        tok = HeadLogps.apply(hidden.reshape(-1, hidden.shape[-1])[src], base.get_output_embeddings().weight, labels)
    else:  # softcapped / scaled / trained heads: let the model apply them
        logits = model(**inputs, use_cache=False).logits
        logits = logits.reshape(-1, logits.shape[-1])[src].float()
        tok = logits.gather(-1, labels[:, None]).squeeze(-1) - logits.logsumexp(-1)
    seq = torch.zeros(batch["rows"], device=tok.device, dtype=tok.dtype).index_add(0, owner, tok)
    return seq, torch.bincount(owner, minlength=batch["rows"]), tok, owner


def completion_logps_kl(model, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-token log-probs, the row of each token, per-token ``KL(reference || policy)``) at the
    positions that predict an answer token; the reference is the model with its adapter disabled."""
    base = model.get_base_model()
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    src, labels = batch["src"], batch["labels"]
    if _plain_head(base):
        with torch.no_grad(), model.disable_adapter():
            ref = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
        width = hidden.shape[-1]
        tok, kl = HeadLogpsKL.apply(hidden.reshape(-1, width)[src], ref.reshape(-1, width)[src],
                                    base.get_output_embeddings().weight, labels)
    else:
        with torch.no_grad(), model.disable_adapter():
            lq = model(**inputs, use_cache=False).logits
        lp = model(**inputs, use_cache=False).logits
        lp, lq = (x.reshape(-1, x.shape[-1])[src].float().log_softmax(-1) for x in (lp, lq))
        tok = lp.gather(-1, labels[:, None]).squeeze(-1)
        kl = (lq.exp() * (lq - lp)).sum(-1)
    return tok, batch["owner"], kl


