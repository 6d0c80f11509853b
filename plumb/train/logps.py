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


