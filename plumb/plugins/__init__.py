"""Builtin plugins: ordinary pluggy plugins, one module per concern.

They import torch, transformers, peft and llama_cpp only inside the functions
that need them, so listing plugins stays fast.
"""
