"""Between Hugging Face models and GGUF, llama.cpp's file format, for every architecture in ``arch.ARCHS``
(Llama 2/3.x and SmolLM, Mistral, Qwen2/2.5, Qwen3, Gemma 2, Gemma 3 text).

* ``export_gguf(model_dir, out, quant)`` — an HF model with its tokenizer and
  chat template -> GGUF: f32, f16 and q8_0 written directly from the float32
  weights (as llama.cpp's converter does), q4_k_m by llama.cpp's own quantizer.
* ``export_lora(adapter_dir, out, base_dir)`` — a peft LoRA adapter -> a GGUF
  LoRA adapter that llama.cpp applies on top of the base GGUF with a scale.
* ``export_merged(adapter_dir, out, base_dir, quant)`` — adapter merged into
  its base, exported and quantized as one model.
* ``make_hf_copy(gguf, out_dir)`` — the reverse: a person's GGUF (any
  quantization the gguf library reads) -> an HF copy to train a LoRA on, which
  then applies on that GGUF (``plumb models add`` keeps one per file).
* ``check_lora_base(base_gguf, lora_gguf)`` — refuse a LoRA on a base it was
  not trained on.

They follow llama.cpp's reference converters (convert_hf_to_gguf.py,
convert_lora_to_gguf.py) and write through the ``gguf`` library; files are
written to a temporary name and renamed into place, so a half-written file is
never seen under the final name. Heavy imports happen inside the functions.
"""

from __future__ import annotations

from plumb.export.gguf_to_hf import make_hf_copy
from plumb.export.hf_to_gguf import SUPPORTED_ARCHITECTURES, export_gguf
from plumb.export.identity import check_lora_base
from plumb.export.lora_to_gguf import export_lora, export_merged
from plumb.export.quantize import QUANTS, quantize

__all__ = ["SUPPORTED_ARCHITECTURES", "QUANTS", "check_lora_base", "export_gguf", "export_lora", "export_merged",
           "make_hf_copy", "quantize"]
