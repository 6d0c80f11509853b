"""The core: what happens (flow, data, events), never how (no model code).

Nothing here imports torch, transformers, peft or llama_cpp.
"""
