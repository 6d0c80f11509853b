"""The models plumb keeps for a user: the starter (pulled once), local GGUFs registered by name with
an HF copy to train on, and the specs that name them. The files live in the per-user cache
(``plumb.core.cache``); the HF copies are made by ``plumb.export.gguf_to_hf``.

    specs.py     parse a spec, resolving ``starter``; the models a workspace can name
    starter.py   SmolLM2-135M-Instruct: pull, check, dequantize
    local.py     ``plumb models add NAME PATH.gguf``: the registry and its HF copies
"""
