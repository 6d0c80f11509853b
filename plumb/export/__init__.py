"""Export to GGUF, llama.cpp's file format.

* ``export_gguf(model_dir, out, quant)`` — a Llama-family Hugging Face model
  with its tokenizer -> GGUF (f32, f16), then optionally quantized by
  llama.cpp's own quantizer (q8_0, q4_k_m).
* ``export_lora(adapter_dir, out, base_dir)`` — a peft LoRA adapter -> a GGUF
  LoRA adapter that llama.cpp applies on top of the base GGUF with a scale.
* ``export_merged(adapter_dir, out, base_dir, quant)`` — adapter merged into
  its base, exported and quantized as one model.

Both follow llama.cpp's reference converters (convert_hf_to_gguf.py,
convert_lora_to_gguf.py) and write through the ``gguf`` library; both write to
a temporary file and rename it into place, so a half-written file is never
seen under the final name. Heavy imports happen inside the functions.
"""

from __future__ import annotations

from plumb.export.hf_to_gguf import SUPPORTED_ARCHITECTURES, export_gguf
from plumb.export.lora_to_gguf import export_lora, export_merged
from plumb.export.quantize import QUANTS, quantize

__all__ = ["SUPPORTED_ARCHITECTURES", "QUANTS", "export_gguf", "export_lora", "export_merged", "quantize"]
