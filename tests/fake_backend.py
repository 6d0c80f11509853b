"""A stand-in for the llama.cpp backend in tests that need the stages' own logic, not a model."""

from __future__ import annotations

from plumb.core.hookspecs import hookimpl


def serve_llamacpp(pm, backend, names: tuple[str, ...] = (), root=None) -> None:
    """Every ``llamacpp:`` spec is answered by ``backend`` (a ``Backend`` named "llamacpp") instead of
    llama.cpp; ``names`` under ``root`` are written as stand-in GGUF files, so the specs' checks pass."""
    for name in names:
        (root / name).write_bytes(b"stand-in")

    class Plugin:
        @hookimpl
        def plumb_register_backends(self, register):
            register(backend)

    pm.unregister(name="plumb.plugins.llamacpp")
    pm.register(Plugin(), name="fake_llamacpp")
