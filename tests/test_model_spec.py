"""Model specs: every accepted form parses; a bad one says which forms are accepted."""

from __future__ import annotations

import pytest

from plumb.core.errors import PlumbError
from plumb.core.specs import parse_spec
from plumb.core.records import ModelSpec


@pytest.mark.parametrize("text, want", [
    ("llamacpp:models/m.gguf", ModelSpec("llamacpp", "models/m.gguf")),
    ("llamacpp:m.gguf+lora:a.gguf", ModelSpec("llamacpp", "m.gguf", "a.gguf", 1.0)),
    ("llamacpp:m.gguf+lora:a.gguf@0.25", ModelSpec("llamacpp", "m.gguf", "a.gguf", 0.25)),
    ("llamacpp:m.gguf+lora:a.gguf@0", ModelSpec("llamacpp", "m.gguf", "a.gguf", 0.0)),
    ("hf:HuggingFaceTB/SmolLM2-135M-Instruct", ModelSpec("hf", "HuggingFaceTB/SmolLM2-135M-Instruct")),
    ("anthropic:claude-sonnet-4-5", ModelSpec("anthropic", "claude-sonnet-4-5")),
    ("openai:http://127.0.0.1:8080/v1", ModelSpec("openai", "http://127.0.0.1:8080/v1")),
    ("  hf:/abs/dir  ", ModelSpec("hf", "/abs/dir")),
])
def test_accepted_forms(text, want):
    assert parse_spec(text) == want


@pytest.mark.parametrize("text", ["", "m.gguf", "llamacpp:", "hf", "9x:y", ":y"])
def test_bad_spec_lists_accepted_forms(text):
    with pytest.raises(PlumbError) as info:
        parse_spec(text)
    msg = str(info.value)
    assert repr(text) in msg
    for form in ("llamacpp:PATH.gguf", "hf:DIR_OR_HUB_ID", "anthropic:MODEL_NAME", "openai:http://", "starter"):
        assert form in msg
    assert info.value.exit_code == 2


def test_bad_lora_scale_and_empty_adapter():
    with pytest.raises(PlumbError, match="bad LoRA scale 'half'"):
        parse_spec("llamacpp:m.gguf+lora:a.gguf@half")
    with pytest.raises(PlumbError, match="empty LoRA path"):
        parse_spec("llamacpp:m.gguf+lora:")


def test_spec_round_trips_through_str():
    spec = parse_spec("llamacpp:m.gguf+lora:a.gguf@0.5")
    assert str(spec) == "llamacpp:m.gguf+lora:a.gguf" and spec.lora_scale == 0.5
    assert parse_spec(str(parse_spec("hf:dir"))) == ModelSpec("hf", "dir")


def test_generate_command_rejects_bad_spec(runner, workspace):
    from plumb.cli import cli

    result = runner.invoke(cli, ["generate", "--model", "m.gguf", "hello"])
    assert result.exit_code == 2 and "Accepted forms" in result.output
    # NAME:TARGET parses for any name; a backend no plugin registers is refused, listing those that are
    assert parse_spec("vllm:http://x") == ModelSpec("vllm", "http://x")
    result = runner.invoke(cli, ["generate", "--model", "gguf:x", "hello"])
    assert result.exit_code == 2
    assert "no installed plugin offers the backend 'gguf'" in result.stderr and "llamacpp" in result.stderr


def test_missing_model_lists_what_is_there(runner, workspace):
    from plumb.cli import cli

    result = runner.invoke(cli, ["generate", "--model", "llamacpp:nope.gguf", "hi"])
    assert result.exit_code == 2
    assert "'nope.gguf' not found" in result.stderr and "llamacpp:starter" in result.stderr
    result = runner.invoke(cli, ["train", "dpo", "--policy", "hf:./no-such-dir", "--data", "workspace"])
    assert result.exit_code == 2 and "hf:starter" in result.stderr
