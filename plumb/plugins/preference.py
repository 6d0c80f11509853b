"""Builtin optimizers: DPO, IPO, hinge, KTO, ORPO and SFT with a LoRA adapter.

A thin plugin over ``plumb.train``: one method object per name in
``plumb.train.METHODS``, each training on its rows' shape (preference pairs;
SFT: prompt -> good answer; KTO: labelled completions) through
``plumb.train.loop.train``. With ``gguf = true`` in the run config the adapter
is also written as a GGUF LoRA that llama.cpp loads on top of the base GGUF.
torch, transformers and peft are imported only when a run starts.
"""

from __future__ import annotations

from pathlib import Path

from plumb.core.hookspecs import hookimpl
from plumb.core.method import Method
from plumb.core.records import RunResult, RunSpec
from plumb.train import METHODS, TrainConfig

SHAPES = {"sft": "sft", "kto": "labels"}  # the others train on preference pairs


class Preference(Method):
    options = TrainConfig

    def __init__(self, name: str, description: str) -> None:
        self.name, self.description, self.data = name, description, SHAPES.get(name, "pairs")

    def train(self, run: RunSpec, ctx) -> RunResult:
        from plumb.train.distributed import world
        from plumb.train.loop import train

        result = train(run, ctx)
        if run.config.get("gguf") and world().main:  # under torchrun, rank 0 alone writes (as the loop does)
            result.artifacts.append(("gguf-lora", export_gguf(result.adapter_dir, run)))
        return result


@hookimpl
def plumb_register_methods(register) -> None:
    for name, description in METHODS.items():
        register(Preference(name, description))


def export_gguf(adapter_dir: str, run: RunSpec) -> str:
    """Convert the peft adapter to a GGUF LoRA next to it (plumb.export.lora_to_gguf)."""
    from plumb.core.errors import PlumbError

    try:
        from plumb.export.lora_to_gguf import export_lora
    except ImportError as exc:
        raise PlumbError(f"--gguf: the GGUF LoRA exporter is not available ({exc}); the peft adapter is saved "
                         f"in {adapter_dir}.") from None
    out_path = Path(run.out_dir) / "adapter.gguf"
    export_lora(adapter_dir, str(out_path), base_dir=run.policy.target)
    return str(out_path)
