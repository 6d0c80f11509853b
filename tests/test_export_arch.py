"""Every supported architecture, on a tiny random model built here (tests/tiny.py ARCHS):

* HF -> f16 GGUF: metadata, logits and greedy tokens agree with transformers;
* the chat template travels: a chat-formatted prompt + answer is the same ids in
  transformers (training) and llama.cpp (serving);
* LoRA -> GGUF LoRA: llama.cpp with the adapter reproduces the merged model;
* the round trip of a person's GGUF: GGUF -> HF copy (plumb models add) -> LoRA
  on the copy -> GGUF LoRA applied by llama.cpp on the original GGUF;
* bad input: not a GGUF, truncated, unsupported architecture or quantization,
  missing tokenizer or chat template, a LoRA on a different base.

The SmolLM2-style Llama is covered by test_export_gguf.py. Logit tolerances are
absolute on logits of scale ~10-20 (f16 weights); measured diffs are 0.005-0.09.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from plumb.core.errors import PlumbError
from tests.tiny import ARCHS

ARCH_NAMES = list(ARCHS)
LOGIT_TOL = 0.15
EXPECT = {  # arch -> (general.architecture, tokenizer model, pre-tokenizer, adds BOS)
    "llama3": ("llama", "gpt2", "llama-bpe", True),
    "mistral": ("llama", "llama", "default", True),
    "qwen2": ("qwen2", "gpt2", "qwen2", False),
    "qwen2-untied": ("qwen2", "gpt2", "qwen2", False),
    "qwen3": ("qwen3", "gpt2", "qwen2", False),
    "gemma2": ("gemma2", "llama", "default", True),
    "gemma3": ("gemma3", "llama", "default", True),
}
CHAT = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Why is the sky blue? 2025 km, naïve café 😀\n\ttabs  spaces"},
        {"role": "assistant", "content": "Light scatters; blue scatters most (42%)!"}]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# -- shared builds (once per session) ---------------------------------------------------------

@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """arch -> (HF dir, f16 GGUF exported by plumb), built on first use."""
    from plumb.export import export_gguf
    from tests.tiny import build_arch, build_arch_tokenizer

    tokenizers: dict = {}
    cache: dict = {}

    def get(arch: str, seed: int = 0):
        if (arch, seed) not in cache:
            kind = ARCHS[arch][0]
            if kind not in tokenizers:
                tokenizers[kind] = build_arch_tokenizer(arch)
            d = build_arch(arch, tmp_path_factory.mktemp(f"{arch}-{seed}"), seed=seed, tokenizer=tokenizers[kind])
            cache[arch, seed] = (d, export_gguf(d, d / "model.f16.gguf", "f16"))
        return cache[arch, seed]

    return get


def load_llama(gguf_path, n_ctx: int = 256, logits_all: bool = True):
    import llama_cpp

    from plumb.export.quantize import captured_stderr

    with captured_stderr():
        return llama_cpp.Llama(str(gguf_path), n_ctx=n_ctx, logits_all=logits_all, verbose=False)


def llama_run(gguf_path, ids, lora=None, scale=1.0, new_tokens=0):
    """(logits over ``ids``, then ``new_tokens`` greedy tokens) from llama.cpp, with an optional LoRA."""
    import ctypes

    import llama_cpp

    llm = load_llama(gguf_path)
    adapter = None
    try:
        if lora:
            adapter = llama_cpp.llama_adapter_lora_init(llm._model.model, str(lora).encode())
            assert adapter, "llama.cpp refused the adapter"
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                                              (ctypes.c_float * 1)(scale))
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)])
        out = []
        for _ in range(new_tokens):
            out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([out[-1]])
        return logits, out
    finally:
        if adapter:
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
            llama_cpp.llama_adapter_lora_free(adapter)
        llm.close()


def hf_run(model_or_dir, ids, new_tokens=0):
    import torch
    from transformers import AutoModelForCausalLM

    model = model_or_dir
    if not hasattr(model, "forward"):
        model = AutoModelForCausalLM.from_pretrained(model_or_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
        seq, out = list(ids), []
        for _ in range(new_tokens):
            out.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
            seq.append(out[-1])
    return logits, out


def chat_ids(model_dir, messages=CHAT):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = tok.apply_chat_template(messages, tokenize=False)
    return text, list(tok(text, add_special_tokens=False)["input_ids"])


def meta(gguf_path):
    llm = load_llama(gguf_path, n_ctx=64, logits_all=False)
    try:
        return dict(llm.metadata), {name for name in _tensor_names(gguf_path)}
    finally:
        llm.close()


def _tensor_names(path):
    import gguf

    return [t.name for t in gguf.GGUFReader(path).tensors]


# -- HF -> GGUF ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_metadata(built, arch):
    from transformers import AutoTokenizer

    d, g = built(arch)
    md, tensors = meta(g)
    tok = AutoTokenizer.from_pretrained(d)
    name, model, pre, adds_bos = EXPECT[arch]
    assert md["general.architecture"] == name
    assert md["tokenizer.ggml.model"] == model and md["tokenizer.ggml.pre"] == pre
    assert md["tokenizer.ggml.add_bos_token"] == str(adds_bos).lower()
    assert md["tokenizer.chat_template"] == tok.chat_template
    assert int(md["tokenizer.ggml.eos_token_id"]) == tok.eos_token_id
    assert md["plumb.source"].startswith("hf-sample:")
    assert ("output.weight" in tensors) == (arch in ("mistral", "qwen2-untied"))  # tied: llama.cpp reuses token_embd
    if arch == "llama3":
        assert "rope_freqs.weight" in tensors
    if arch.startswith("qwen2"):
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.0.attn_v.bias"} <= tensors
    if arch in ("qwen3", "gemma3"):
        assert {"blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight"} <= tensors
    if arch == "gemma2":
        assert float(md["gemma2.attn_logit_softcapping"]) == 50.0
        assert float(md["gemma2.final_logit_softcapping"]) == 30.0
    if arch == "gemma3":
        assert md["gemma3.rope.scaling.type"] == "linear" and float(md["gemma3.rope.freq_base_swa"]) == 10000.0
    if model == "llama":
        assert md["tokenizer.ggml.add_space_prefix"] == str(arch == "mistral").lower()


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_logits_and_greedy_match_transformers(built, arch):
    d, g = built(arch)
    _, ids = chat_ids(d)
    hf, hf_new = hf_run(d, ids, new_tokens=12)
    ll, ll_new = llama_run(g, ids, new_tokens=12)
    diff = np.abs(hf - ll).max()
    print(f"{arch}: max |logit diff| f16 GGUF vs transformers {diff:.4f} (scale {np.abs(hf).max():.1f}); "
          f"greedy {hf_new} vs {ll_new}")
    assert diff < LOGIT_TOL
    assert (hf.argmax(-1) == ll.argmax(-1)).mean() >= 0.97  # random models have a few near-ties
    assert hf_new == ll_new


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_chat_template_travels(built, arch):
    """Prompt + answer through the template: the same ids in transformers and in llama.cpp with the
    GGUF's own template; and plumb's serving prompt equals plumb's training prompt."""
    from plumb.core.records import Chat
    from plumb import llamacpp
    from plumb.train.data import tokenize
    from transformers import AutoTokenizer

    d, g = built(arch)
    text, ids = chat_ids(d)
    loaded = llamacpp.load(g)
    try:
        assert loaded.template == AutoTokenizer.from_pretrained(d).chat_template
        assert loaded.llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        chat = Chat.from_user(CHAT[1]["content"])
        train_prompt, _, _ = tokenize(AutoTokenizer.from_pretrained(d), chat.to_dicts(), [CHAT[2]["content"]])
        served = llamacpp.prompt_tokens(loaded, chat)
    finally:
        llamacpp.close_all()
    if served[:2] == [served[0]] * 2 and served[1:] == train_prompt:
        pytest.xfail("plumb/llamacpp/model.py prompt_tokens adds BOS although the template already renders "
                     "it (Llama 3, Mistral, Gemma): serving starts with two BOS tokens, training with one")
    assert served == train_prompt


def test_metaspace_first_tokenizer_keeps_chat_ids(built, tmp_path):
    """Newer conversions of Llama 2/Mistral tokenizers use Metaspace(prepend_scheme="first") instead of a
    Prepend normalizer: text after a special token gets no "▁". llama.cpp has no "first", so the export
    turns its prefix off, which is what a chat prompt (always opening with a special token) needs."""
    d, _ = built("mistral")
    first = tmp_path / "first"
    shutil.copytree(d, first, ignore=shutil.ignore_patterns("*.gguf"))
    data = json.loads((first / "tokenizer.json").read_text())
    data["normalizer"] = None
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    (first / "tokenizer.json").write_text(json.dumps(data))
    from plumb.export import export_gguf

    g = export_gguf(first, tmp_path / "first.gguf")
    text, ids = chat_ids(first)
    llm = load_llama(g, n_ctx=64, logits_all=False)
    try:
        assert llm.metadata["tokenizer.ggml.add_space_prefix"] == "false"
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
    finally:
        llm.close()


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_real_sentencepiece_model(arch, tmp_path):
    """A tokenizer.model trained by sentencepiece itself (as Llama 2, Mistral and Gemma ship), converted by
    transformers: chat ids and logits agree. Skipped where the sentencepiece package is not installed."""
    pytest.importorskip("sentencepiece")
    from plumb.export import export_gguf
    from tests.tiny import build_arch_model, build_sentencepiece_tokenizer

    tok = build_sentencepiece_tokenizer("llama" if arch == "mistral" else "gemma", tmp_path / "m")
    build_arch_model(arch, tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    g = export_gguf(tmp_path / "m", tmp_path / "m.gguf")
    _, ids = chat_ids(tmp_path / "m")
    llm = load_llama(g, n_ctx=64, logits_all=False)
    try:
        assert llm.tokenize(chat_ids(tmp_path / "m")[0].encode(), add_bos=False, special=True) == ids
    finally:
        llm.close()
    hf, _ = hf_run(tmp_path / "m", ids)
    assert np.abs(hf - llama_run(g, ids)[0]).max() < LOGIT_TOL


# -- LoRA -> GGUF LoRA ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_lora_reproduces_merged_model(built, arch, tmp_path):
    import torch

    from plumb.export import export_lora
    from plumb.export.identity import check_lora_base
    from tests.tiny import random_lora

    d, g = built(arch)
    _, ids = chat_ids(d)
    peft_model = random_lora(d, tmp_path / "adapter", TARGETS, r=8, std=0.1, seed=2)
    out = export_lora(tmp_path / "adapter", tmp_path / "adapter.gguf", base_dir=d)
    check_lora_base(g, out)
    with torch.no_grad():
        want = peft_model.merge_and_unload().eval()(torch.tensor([ids])).logits[0].numpy()
    base, _ = hf_run(d, ids)
    got, _ = llama_run(g, ids, lora=out)
    diff = np.abs(got - want).max()
    print(f"{arch}: max |logit diff| base GGUF + LoRA GGUF vs merged transformers {diff:.4f}; "
          f"the adapter moves logits by {np.abs(want - base).max():.2f}")
    assert np.abs(want - base).max() > 1.0
    assert diff < LOGIT_TOL
    assert np.abs(llama_run(g, ids, lora=out, scale=0.0)[0] - base).max() < LOGIT_TOL


# -- a person's GGUF: GGUF -> HF copy -> LoRA -> GGUF LoRA on the original ---------------------

@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_gguf_round_trip(built, arch, tmp_path):
    import torch

    from plumb.core.cache import file_sha256
    from plumb.export import export_lora
    from plumb.export.gguf_to_hf import make_hf_copy
    from plumb.export.identity import BASE_KEY, check_lora_base
    from tests.tiny import random_lora

    d, g = built(arch)
    person = tmp_path / "theirs.gguf"  # as if downloaded: no plumb.source to lean on
    shutil.copy(g, person)
    copy = make_hf_copy(person, tmp_path / "copy", sha256=file_sha256(person))
    _, ids = chat_ids(d)
    assert chat_ids(copy)[1] == ids  # the copy's tokenizer and template are the original's
    orig, _ = hf_run(d, ids)
    ours, _ = hf_run(copy, ids)
    assert np.abs(ours - orig).max() < LOGIT_TOL

    peft_model = random_lora(copy, tmp_path / "adapter", TARGETS, r=8, std=0.1, seed=3)
    out = export_lora(tmp_path / "adapter", tmp_path / "adapter.gguf", base_dir=copy)
    import gguf

    assert gguf.GGUFReader(out).fields[BASE_KEY].contents() == f"gguf-sha256:{file_sha256(person)}"
    check_lora_base(person, out)
    with torch.no_grad():
        want = peft_model.merge_and_unload().eval()(torch.tensor([ids])).logits[0].numpy()
    got, _ = llama_run(person, ids, lora=out)
    diff = np.abs(got - want).max()
    print(f"{arch}: HF copy vs original {np.abs(ours - orig).max():.4f}; original GGUF + LoRA trained on the "
          f"copy vs merged copy {diff:.4f}")
    assert diff < LOGIT_TOL


def test_round_trip_from_a_quantized_gguf(built, tmp_path):
    """People often have only a quantized GGUF: the copy is its dequantized weights, and the LoRA on the
    q8_0 original stays close to the merged copy (llama.cpp also rounds activations to 8 bits there)."""
    import torch

    from plumb.export import export_lora
    from plumb.export.gguf_to_hf import make_hf_copy
    from plumb.export.quantize import quantize, tensor_types
    from tests.tiny import random_lora

    d, g = built("qwen2")
    q8 = quantize(g, tmp_path / "theirs.q8_0.gguf", "q8_0")
    assert "Q8_0" in tensor_types(q8)
    copy = make_hf_copy(q8, tmp_path / "copy")
    _, ids = chat_ids(d)
    peft_model = random_lora(copy, tmp_path / "adapter", TARGETS, r=8, std=0.1, seed=3)
    out = export_lora(tmp_path / "adapter", tmp_path / "adapter.gguf", base_dir=copy)
    with torch.no_grad():
        want = peft_model.merge_and_unload().eval()(torch.tensor([ids])).logits[0].numpy()
    got, _ = llama_run(q8, ids, lora=out)
    diff, scale = np.abs(got - want).max(), np.abs(want).max()
    agree = (got.argmax(-1) == want.argmax(-1)).mean()
    print(f"q8_0 original + LoRA vs merged copy: max diff {diff:.3f} of scale {scale:.1f}, argmax agreement {agree:.3f}")
    assert diff < 0.15 * scale and agree >= 0.9


# -- plumb models add ----------------------------------------------------------------------------

def test_models_add_registers_and_reuses(built, runner, workspace, monkeypatch, tmp_path):
    from plumb.cli import cli
    from plumb.models import local as localmodels

    monkeypatch.setenv("PLUMB_HOME", str(tmp_path / "home"))
    _, g = built("qwen3")
    result = runner.invoke(cli, ["models", "add", "mine", str(g), "--use", "--json"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout[result.stdout.index("{"):])
    assert entry["arch"] == "qwen3" and entry["specs"]["generate"] == f"llamacpp:{g.resolve()}"
    assert localmodels.hf_copy_for(g) == tmp_path / "home" / "models" / "local" / entry["sha256"][:16] / "hf"
    toml = (workspace.root / "plumb.toml").read_text()
    assert f'train = "hf:{entry["hf"]}"' in toml and f'generate = "llamacpp:{g.resolve()}"' in toml
    listed = runner.invoke(cli, ["models", "--json"])
    assert any(m["name"] == "mine" and m["format"] == "hf" for m in json.loads(listed.stdout)["models"])

    again = runner.invoke(cli, ["models", "add", "alias", str(g)])  # same file: the copy is reused
    assert again.exit_code == 0 and "dequantizing" not in again.output
    taken = runner.invoke(cli, ["models", "add", "mine", str(built("qwen2")[1])])
    assert taken.exit_code == 2 and "already registered" in taken.output
    bad = runner.invoke(cli, ["models", "add", "starter", str(g)])
    assert bad.exit_code == 2 and "bad model name" in bad.output


def test_bring_your_own_gguf_end_to_end(built, runner, workspace, monkeypatch, tmp_path):
    """The person's flow with plumb's own commands: register their GGUF for the workspace, train a LoRA
    on its HF copy (SFT, 2 steps), get a GGUF LoRA that llama.cpp serves on their original file."""
    from plumb.cli import cli
    from plumb.export.identity import check_lora_base

    monkeypatch.setenv("PLUMB_HOME", str(tmp_path / "home"))
    theirs = tmp_path / "mine" / "qwen.gguf"
    theirs.parent.mkdir()
    shutil.copy(built("qwen2")[1], theirs)
    assert runner.invoke(cli, ["models", "add", "qwen", str(theirs), "--use"]).exit_code == 0
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": f"Why is the sky blue {i}?"},
                                                       {"role": "assistant", "content": "Light scatters."}]})
                               for i in range(8)))
    res = runner.invoke(cli, ["train", "sft", "--data", str(data), "-o", "steps=2", "--gguf", "--in-process", "--json"])
    assert res.exit_code == 0, res.output
    adapter = dict(json.loads(res.stdout[res.stdout.index("{"):])["artifacts"])["gguf-lora"]
    check_lora_base(theirs, adapter)
    with pytest.raises(PlumbError, match="different base"):
        check_lora_base(built("qwen2", seed=1)[1], adapter)
    res = runner.invoke(cli, ["generate", "--model", f"llamacpp:{theirs}+lora:{adapter}", "--temperature", "0",
                              "--max-tokens", "8", "--json", "Why is the sky blue?"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout[res.stdout.index("{"):])
    samples = next(v for v in out.values() if isinstance(v, list) and v)
    assert not out["failed"] and samples[0]["finish_reason"] == "length"  # 8 tokens, base + their LoRA


# -- bad input -------------------------------------------------------------------------------------

def test_not_a_gguf_or_truncated(built, tmp_path):
    from plumb.export.gguf_to_hf import inspect_gguf

    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(PlumbError, match="not a GGUF file"):
        inspect_gguf(text)
    _, g = built("qwen2")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(g.read_bytes()[: g.stat().st_size // 2])
    with pytest.raises(PlumbError, match="truncated"):
        inspect_gguf(cut)
    head = tmp_path / "head.gguf"
    head.write_bytes(g.read_bytes()[:200])
    with pytest.raises(PlumbError, match="truncated or damaged"):
        inspect_gguf(head)


def test_unsupported_gguf_architecture_and_quant_type(built, tmp_path, monkeypatch):
    import gguf

    import transformers.modeling_gguf_pytorch_utils as tgguf
    from plumb.export.gguf_to_hf import inspect_gguf
    from plumb.export.quantize import quantize

    w = gguf.GGUFWriter(tmp_path / "phi.gguf", "phi2")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    _finish(w)
    with pytest.raises(PlumbError, match="'phi2' model.*Supported GGUF architectures: gemma2, gemma3, llama"):
        inspect_gguf(tmp_path / "phi.gguf")

    _, g = built("qwen2")
    monkeypatch.setattr(tgguf, "GGUF_SUPPORTED_ARCHITECTURES", ["llama"])
    with pytest.raises(PlumbError, match="transformers cannot read.*Hugging Face directory"):
        inspect_gguf(g)
    monkeypatch.undo()
    q8 = quantize(g, tmp_path / "q8.gguf", "q8_0")
    traits = dict(gguf.quants._type_traits)
    traits.pop(gguf.GGMLQuantizationType.Q8_0)
    monkeypatch.setattr(gguf.quants, "_type_traits", traits)
    with pytest.raises(PlumbError, match=r"cannot dequantize: Q8_0 \(\d+ tensors\).*Hugging Face directory"):
        inspect_gguf(q8)


def test_missing_tokenizer_or_chat_template(built, tmp_path):
    from plumb.export import export_gguf
    from plumb.export.gguf_to_hf import inspect_gguf

    d, _ = built("gemma2")
    no_tok = tmp_path / "no-tok"
    shutil.copytree(d, no_tok)
    (no_tok / "tokenizer.json").unlink()
    with pytest.raises(PlumbError, match="no tokenizer plumb can read.*tokenizer.json"):
        export_gguf(no_tok, tmp_path / "x.gguf")
    no_template = tmp_path / "no-template"
    shutil.copytree(d, no_template)
    (no_template / "chat_template.jinja").unlink()
    with pytest.raises(PlumbError, match="no chat template.*chat_template.jinja"):
        export_gguf(no_template, tmp_path / "x.gguf")
    (no_template / "chat_template.jinja").write_text((d / "chat_template.jinja").read_text())  # the way to give one
    out = export_gguf(no_template, tmp_path / "x.gguf")
    assert not list(tmp_path.glob("*.part"))

    import gguf

    plain = tmp_path / "plain.gguf"  # a GGUF without a template: no HF copy for training
    r = gguf.GGUFReader(out)
    w = gguf.GGUFWriter(plain, "gemma2")
    for f in r.fields.values():
        if f.name in ("tokenizer.chat_template", "general.architecture") or f.name.startswith("GGUF."):
            continue
        array = f.types[0] == gguf.GGUFValueType.ARRAY
        w.add_key_value(f.name, f.contents(), f.types[0], f.types[-1] if array else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    _finish(w)
    with pytest.raises(PlumbError, match="no chat template.*instruct"):
        inspect_gguf(plain)


def test_unsupported_hf_architecture_or_rope(tmp_path):
    from plumb.export import export_gguf

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Phi3ForCausalLM"]}))
    with pytest.raises(PlumbError, match="Phi3ForCausalLM.*Supported: LlamaForCausalLM, MistralForCausalLM, "
                                         "Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
        "rope_scaling": {"type": "yarn", "factor": 4.0}}))
    with pytest.raises(PlumbError, match="rope scaling 'yarn' is not supported for Qwen2"):
        export_gguf(tmp_path, tmp_path / "x.gguf")


def test_lora_on_a_different_base_is_refused(built, tmp_path):
    from plumb.export import export_lora
    from plumb.export.identity import check_lora_base
    from tests.tiny import random_lora

    d, g = built("qwen2")
    random_lora(d, tmp_path / "adapter", TARGETS, r=4, std=0.1, seed=2)
    lora = export_lora(tmp_path / "adapter", tmp_path / "adapter.gguf", base_dir=d)
    check_lora_base(g, lora)
    with pytest.raises(PlumbError, match="for a qwen2 model, but .* is qwen3"):
        check_lora_base(built("qwen3")[1], lora)
    with pytest.raises(PlumbError, match="trained on hf-sample:.*a different base \\(same shapes, other weights\\)"):
        check_lora_base(built("qwen2", seed=1)[1], lora)
    with pytest.raises(PlumbError, match="shape"):
        check_lora_base(built("qwen2-untied")[1], _resized(tmp_path, lora))


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _resized(tmp_path, lora):
    """The adapter with its recorded base removed and one A matrix the wrong width: shapes alone must refuse it."""
    import gguf

    r = gguf.GGUFReader(lora)
    out = tmp_path / "resized.gguf"
    w = gguf.GGUFWriter(out, "qwen2")
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    for t in r.tensors:
        data = np.asarray(t.data)
        if t.name.endswith("attn_q.weight.lora_a"):
            data = np.zeros((data.shape[0], data.shape[1] * 2), np.float32)
        w.add_tensor(t.name, np.ascontiguousarray(data))
    _finish(w)
    return out
