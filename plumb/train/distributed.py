"""Data-parallel training under ``torchrun`` or ``accelerate launch``: one process per rank.

    torchrun --standalone --nproc_per_node 2 -m plumb train dpo --data pairs.jsonl --out adapters/dpo-2

The launcher starts N copies of the command with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; ``world()`` reads them
(without torch) and ``join`` joins the process group: gloo on a CPU, nccl on
CUDA (each rank on ``cuda:LOCAL_RANK``), with a timeout (``PLUMB_DIST_TIMEOUT``
seconds, default 900) so a rank that hangs stops the others instead of holding
them forever. Every rank runs the whole loop on the same rows, in the same
global order; what differs is which rows of each global batch it computes:

* DPO family, SFT, reward model: each micro-batch of ``batch_size`` rows is
  split ``rows[rank::world_size]``; a rank's loss is its share of the micro-batch
  mean (``loss x its rows / the micro-batch's rows``), so the ranks' gradients
  *summed* are the one-process gradient of the same global batch;
* GRPO: each step's prompts are split ``prompts[rank::world_size]``, whole groups
  of G completions: a rank samples (llama.cpp or transformers) and scores its
  groups' answers, each answer seeded by its group and place, not by the rank,
  so N ranks sample what one process would. The ranks then exchange their
  rollouts and rewards (one ``gather``), and every rank computes the same
  advantages (``scale_rewards = "batch"``: the whole step's std), the same
  zero-spread skips and stop, and the same token weights (dapo's denominator:
  the whole step's kept tokens); a rank trains on its own groups' answers, so
  the summed gradients are the one-process gradient of the step. Rank 0 writes
  every rollout to ``rollouts.jsonl`` (the store gets each once) and runs the
  held-out evaluation while the others wait at the next collective; with
  llama.cpp each rank exports the LoRA to its own GGUF (rank R > 0 under
  ``OUT/.rank-R/``), after rank 0 made the base GGUF once.

Gradients are summed with one all_reduce of the LoRA gradients, flattened, after
the step's last backward: what DistributedDataParallel does, by hand. The loops
call the decoder and the LM head directly (``logps.HeadLogps``) and run the
reference with the adapter disabled, paths DDP's wrapped ``forward`` would not
see; with LoRA the gradients are a few MB, one all_reduce a step.

Rank 0 alone writes (checkpoints, the adapter, events and so the store's run
and metrics); the checkpoint holds the global step and the global data order,
so a run resumes under any world size. The ranks compare a hash of their
training rows before the first step (``same``) and stop together on a cancel
or a spent time budget (``any``). A collective that fails (a rank died, or the
timeout passed) becomes a PlumbError naming the rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from plumb.core.errors import PlumbError

TIMEOUT_ENV = "PLUMB_DIST_TIMEOUT"


@dataclass(frozen=True)
class World:
    """This process's place among the ranks; ``World()`` is one process training alone."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's part of ``items``: every ``size``-th one from ``rank`` on."""
        return items[self.rank::self.size]

    def check_batches(self, groups: list[list[int]], batch_size: int) -> None:
        """Refuse micro-batches that cannot be split: ``batch_size`` not a multiple of the world size, or a
        last micro-batch with fewer rows than ranks."""
        if self.size == 1:
            return
        if batch_size % self.size:
            raise PlumbError(f"--batch-size {batch_size} does not split over {self.size} ranks: each micro-batch "
                             f"is shared out row by row, so use a multiple of {self.size} (each rank then computes "
                             f"batch_size / {self.size} rows).", exit_code=2)
        short = min(len(g) for g in groups)
        if short < self.size:
            raise PlumbError(f"the last micro-batch has {short} rows, fewer than the {self.size} ranks; use a "
                             "--batch-size that leaves a larger remainder of the rows, or fewer ranks.", exit_code=2)

    def _call(self, what: str, fn) -> Any:
        try:
            return fn()
        except RuntimeError as exc:  # torch.distributed's DistError and gloo/nccl failures are RuntimeErrors
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise PlumbError(f"rank {self.rank} of {self.size} lost the other ranks while {what} ({first}): one of "
                             "them died or hung. The run resumes from its last checkpoint under any number of "
                             "ranks.") from None

    def sum_(self, tensor) -> Any:
        """``tensor`` summed over the ranks, in place (and returned)."""
        if self.size > 1:
            import torch.distributed as dist

            self._call("summing a step's numbers", lambda: dist.all_reduce(tensor))
        return tensor

    def sum_gradients(self, params) -> None:
        """Every rank's gradients replaced by their sum over the ranks (one all_reduce of them flattened); a
        parameter without a gradient on this rank counts as zeros."""
        if self.size == 1:
            return
        import torch

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = self.sum_(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any (a cancel, a spent time budget): the ranks stop
        at the same step."""
        if self.size == 1:
            return flag
        import torch

        return bool(self.sum_(torch.tensor([float(flag)], device=_device())).item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        self._call("gathering the ranks' results", lambda: dist.all_gather_object(out, obj))
        return out

    def same(self, fingerprint: str, what: str) -> None:
        """Stop every rank when they do not hold the same ``what`` (``fingerprint`` its hash)."""
        seen = self.gather(fingerprint)
        if len(set(seen)) > 1:
            # every rank saw the same hashes and stops here: meet once more so none exits (closing its
            # sockets) while another is still inside the gather (gloo then aborts it: exit -6, seen in CI)
            self.barrier()
            ranks = ", ".join(f"rank {r}: {f}" for r, f in enumerate(seen))
            raise PlumbError(f"the ranks disagree about the {what} ({ranks}); every rank must read the same "
                             "data with the same options (the same --data, workspace and flags).", exit_code=2)

    def cat(self, *tensors) -> tuple:
        """Each of ``tensors`` concatenated over the ranks (in rank order), on its own device."""
        if self.size == 1:
            return tensors
        import torch

        parts = self.gather([t.detach().cpu() for t in tensors])
        return tuple(torch.cat([p[i] for p in parts]).to(t.device) for i, t in enumerate(tensors))

    def barrier(self) -> None:
        """Wait here until every rank arrives (after rank 0 wrote what the others return)."""
        if self.size > 1:
            import torch.distributed as dist

            self._call("waiting for the other ranks", dist.barrier)


def _device() -> str:
    import torch
    import torch.distributed as dist

    return f"cuda:{torch.cuda.current_device()}" if dist.get_backend() == "nccl" else "cpu"


def world() -> World:
    """The launcher's world from the environment (``World()`` without one); no torch import."""
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def join(device: str) -> tuple[World, str]:
    """Under a launcher: join the process group (once per process) and return the world and this rank's
    device (``cuda:LOCAL_RANK`` for CUDA); alone: ``(World(), device)``."""
    w = world()
    if w.size == 1:
        return w, device
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        device = f"cuda:{w.local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, 900)))
        w._call("joining the process group",
                lambda: dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout))
    return w, device
