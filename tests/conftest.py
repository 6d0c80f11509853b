from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("PLUMB_NO_ENTRY_POINTS", "")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random Llama + trained BPE tokenizer on disk (built once per session)."""
    from tests.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace, with the cwd inside it."""
    from plumb.core.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    monkeypatch.chdir(ws.root)
    monkeypatch.delenv("PLUMB_WORKSPACE", raising=False)
    return ws


@pytest.fixture(scope="session")
def tiny_gguf(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model exported to an f16 GGUF by plumb's own exporter (built once per session)."""
    from plumb.export import export_gguf

    return export_gguf(tiny_model_dir, tmp_path_factory.mktemp("tiny-gguf") / "tiny.f16.gguf", "f16")


@pytest.fixture(scope="session")
def real_starter():
    """(gguf, hf_dir) of the real SmolLM2-135M-Instruct, pulled once into the user cache (~93 MB)."""
    from plumb.models import starter

    return starter.pull()


@pytest.fixture
def one_thread(monkeypatch):
    """torch and llama.cpp on one thread: the tiny model's ops are far too small for two, and on a shared
    2-core box OpenMP's spin-waiting made them up to 50x slower. Modules that train the tiny model use it
    for every test (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("PLUMB_THREADS", "1")
    yield
    torch.set_num_threads(before)
