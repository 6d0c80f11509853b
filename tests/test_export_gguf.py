"""GGUF export: metadata, tokenization, logits and greedy parity with transformers; LoRA adapters.

The standard tiny model (tests/tiny.py) answers every prompt with newlines, so
parity is also checked on a "lively" copy whose layer weights are redrawn
with a larger spread: its greedy continuations differ by prompt and token.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, ModelSpec, SamplingParams

PROMPTS = ["Why is the sky blue?", "Tell me a story about 12 cats.", "What is 2025 + 7?",
           "Make a list of good books", "how do rivers find the sea", "Say yes or no: is fire cold?",
           "Where is the old city road?", "Give me a short answer", "Why do birds sing at night?",
           "What number is 17?"]
LOGIT_TOL = 0.1  # max |llama.cpp - transformers| on logits of scale ~15-40 (f16 weights); measured 0.005-0.04


@pytest.fixture(scope="module")
def lively_dir(tmp_path_factory):
    import torch

    from tests.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and "embed" not in name:
                p.normal_(0.0, 0.2)
    out = tmp_path_factory.mktemp("lively")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def lively_gguf(lively_dir, tmp_path_factory):
    from plumb.export import export_gguf

    return export_gguf(lively_dir, tmp_path_factory.mktemp("lively-gguf") / "lively.f16.gguf", "f16")


def hf_logits(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def llama_logits(gguf_path, ids, lora=None, scale=1.0):
    import ctypes

    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, logits_all=True, verbose=False)
    adapter = None
    try:
        if lora:
            adapter = llama_cpp.llama_adapter_lora_init(llm._model.model, str(lora).encode())
            assert adapter, "llama.cpp refused the adapter"
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter), 1,
                                              (ctypes.c_float * 1)(scale))
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        if adapter:
            llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, None, 0, None)
            llama_cpp.llama_adapter_lora_free(adapter)
        llm.close()


def chat_ids(model_dir, text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    rendered = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}],
                                       tokenize=False, add_generation_prompt=True)
    return rendered, tok(rendered, add_special_tokens=False)["input_ids"]


def test_metadata_carries_tokenizer_and_template(tiny_gguf, tiny_model_dir):
    import llama_cpp
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    llm = llama_cpp.Llama(str(tiny_gguf), n_ctx=64, verbose=False)
    try:
        meta = llm.metadata
    finally:
        llm.close()
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["tokenizer.ggml.add_bos_token"] == "false"  # ChatML: no BOS prepended
    assert meta["tokenizer.chat_template"] == tok.chat_template
    assert int(meta["tokenizer.ggml.bos_token_id"]) == tok.bos_token_id == 1
    assert int(meta["tokenizer.ggml.eos_token_id"]) == tok.eos_token_id == 2
    assert not list(tiny_gguf.parent.glob("*.part"))


@pytest.mark.parametrize("text", ["Why is the sky blue? 2025 km, 42% and $7!", "naïve café — ünïcode ✓ 😀\n\ttabs  spaces"])
def test_tokenization_parity_on_chat_text(tiny_gguf, tiny_model_dir, text):
    import llama_cpp

    rendered, ids = chat_ids(tiny_model_dir, text)
    llm = llama_cpp.Llama(str(tiny_gguf), n_ctx=64, verbose=False)
    try:
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ids
    finally:
        llm.close()


def test_logits_match_transformers(lively_gguf, lively_dir):
    _, ids = chat_ids(lively_dir, "Tell me a story about 12 cats.")
    hf, ll = hf_logits(lively_dir, ids), llama_logits(lively_gguf, ids)
    diff = np.abs(hf - ll).max()
    print(f"max |logit diff| f16 GGUF vs transformers: {diff:.4f} (logit scale {np.abs(hf).max():.1f})")
    assert diff < LOGIT_TOL
    assert (hf.argmax(-1) == ll.argmax(-1)).all()


def greedy(backend_spec, chats, n_tokens=24):
    from plumb import llamacpp
    from plumb.train import generate as hf_generate

    params = SamplingParams(temperature=0, max_tokens=n_tokens)
    if backend_spec.backend == "hf":
        m, t = hf_generate.load(backend_spec.target)
        return [r[0] for r in hf_generate.generate_with(m, t, chats, params)]
    return [r[0] for r in llamacpp.generate(backend_spec, chats, params)]


def test_greedy_continuations_identical(lively_gguf, lively_dir):
    chats = [Chat.from_user(p) for p in PROMPTS[:3]]
    hf = greedy(ModelSpec("hf", str(lively_dir)), chats)
    ll = greedy(ModelSpec("llamacpp", str(lively_gguf)), chats)
    for a, b in zip(hf, ll):
        assert a.completion_tokens >= 20 and b.completion_tokens >= 20
        assert a.text == b.text


def test_q8_0_is_smaller_and_mostly_agrees(lively_gguf, lively_dir, tmp_path):
    from plumb.export import export_gguf

    q8 = export_gguf(lively_dir, tmp_path / "lively.q8_0.gguf", "q8_0")
    assert q8.stat().st_size < lively_gguf.stat().st_size
    # A random model's top logits are close, so one rounding flips a token and the rest diverge:
    # compare 4-token continuations here (measured 9/10; 16 tokens: 2/10). bench/ measures the starter.
    chats = [Chat.from_user(p) for p in PROMPTS]
    ref = greedy(ModelSpec("llamacpp", str(lively_gguf)), chats, 4)
    got = greedy(ModelSpec("llamacpp", str(q8)), chats, 4)
    rate = sum(a.text == b.text for a, b in zip(ref, got)) / len(chats)
    print(f"q8_0 vs f16 greedy agreement over {len(chats)} prompts x 4 tokens: {rate:.2f}")
    assert rate >= 0.7



def converter_q8_0(f32_gguf, out):
    """The tensors of ``f32_gguf`` re-encoded as llama.cpp's convert_hf_to_gguf.py --outtype q8_0 encodes
    them: every 2-D weight by gguf.quants.quantize(float32, Q8_0), 1-D tensors kept in F32."""
    import gguf

    reader, writer = gguf.GGUFReader(f32_gguf), gguf.GGUFWriter(out, "llama")
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub)
    for t in reader.tensors:
        data = np.array(t.data, dtype=np.float32).reshape(list(reversed(t.shape.tolist())))
        if data.ndim == 1:
            writer.add_tensor(t.name, data)
        else:
            writer.add_tensor(t.name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0),
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_q8_0_agrees_with_transformers_as_well_as_llama_cpps_converter(lively_dir, tmp_path):
    """Greedy-token agreement with transformers, teacher-forced: each of three chat prompts is followed by
    transformers' own 24-token greedy continuation, and at every position of those sequences the argmax
    of llama.cpp's logits is compared with transformers'. plumb's q8_0 must agree at least as often as a
    file made the converter's way (and holds the very same tensors). Measured on this model: converter
    0.932, plumb 0.932 (f16: 1.00); plumb's earlier route, an f16 file through llama_model_quantize,
    rounds every weight twice and reached 0.921."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from plumb.export import export_gguf, quantize

    model = AutoModelForCausalLM.from_pretrained(lively_dir, dtype=torch.float32).eval()
    seqs = []
    for prompt in PROMPTS[:3]:
        _, ids = chat_ids(lively_dir, prompt)
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), max_new_tokens=24, min_new_tokens=24, do_sample=False)
            seqs.append((out[0].tolist(), model(out).logits[0].numpy().argmax(-1)))

    def agreement(path):
        hits = [llama_logits(path, ids).argmax(-1) == want for ids, want in seqs]
        return float(np.concatenate(hits).mean())

    ours = export_gguf(lively_dir, tmp_path / "plumb.q8_0.gguf", "q8_0")
    ref = converter_q8_0(export_gguf(lively_dir, tmp_path / "plumb.f32.gguf", "f32"), tmp_path / "conv.q8_0.gguf")
    twice = quantize(export_gguf(lively_dir, tmp_path / "plumb.f16.gguf", "f16"), tmp_path / "twice.q8_0.gguf", "q8_0")
    rates = {name: agreement(p) for name, p in (("plumb", ours), ("converter", ref), ("f16 -> quantizer", twice))}
    print("q8_0 greedy agreement with transformers over 3 prompts x (prompt + 24 tokens): "
          + ", ".join(f"{k} {v:.3f}" for k, v in rates.items()))
    assert rates["plumb"] >= rates["converter"] >= 0.9
    mine = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(ours).tensors}
    theirs = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(ref).tensors}
    assert mine == theirs
    assert {t for t, _ in mine.values()} == {gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.F32}

def test_q4_k_m_on_tiny_dims_falls_back_and_says_so(tiny_model_dir, tmp_path):
    from plumb.export import export_gguf
    from plumb.export.quantize import fallback_note, tensor_types

    out = export_gguf(tiny_model_dir, tmp_path / "tiny.q4_k_m.gguf", "q4_k_m")
    assert "Q5_0" in tensor_types(out)  # 64-wide rows cannot take 256-blocks
    assert "fallback" in fallback_note(out)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.q4_k_m.gguf"]  # no intermediate left behind


def test_unsupported_architecture_is_refused(tmp_path):
    from plumb.export import export_gguf

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(PlumbError, match="GPT2LMHeadModel.*Supported: LlamaForCausalLM"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_lora_adapter_reproduces_merged_model(lively_dir, lively_gguf, tmp_path, runner):
    import torch

    from plumb.export import export_lora
    from tests.tiny import random_lora

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = random_lora(lively_dir, tmp_path / "adapter", targets, r=8, std=0.1, seed=2)
    out = export_lora(tmp_path / "adapter", tmp_path / "adapter.gguf", base_dir=lively_dir)

    _, ids = chat_ids(lively_dir, "Why is the sky blue?")
    merged = peft_model.merge_and_unload().eval()
    with torch.no_grad():
        want = merged(torch.tensor([ids])).logits[0].numpy()
    base = hf_logits(lively_dir, ids)
    got = llama_logits(lively_gguf, ids, lora=out, scale=1.0)
    diff = np.abs(got - want).max()
    print(f"max |logit diff| base GGUF + LoRA GGUF vs merged transformers: {diff:.4f}; "
          f"adapter moves logits by {np.abs(want - base).max():.2f}")
    assert np.abs(want - base).max() > 1.0  # the adapter really changes the model
    assert diff < LOGIT_TOL
    assert np.abs(llama_logits(lively_gguf, ids, lora=out, scale=0.0) - base).max() < LOGIT_TOL

    from plumb.cli import cli  # the other route: merge, then export one model

    merged_gguf = tmp_path / "merged.gguf"
    result = runner.invoke(cli, ["export", "gguf", "--adapter", str(tmp_path / "adapter"), "--base", f"hf:{lively_dir}",
                                 "--merge", "--out", str(merged_gguf)])
    assert result.exit_code == 0, result.output
    assert np.abs(llama_logits(merged_gguf, ids) - want).max() < LOGIT_TOL


def test_cli_adapter_export_is_the_export_stage(tiny_model_dir, workspace, runner):
    """`plumb export gguf --adapter` in a workspace records the GGUF LoRA with its sha256 and, run again on
    the same adapter, finds it already exported instead of writing it again."""
    from plumb.cli import cli
    from tests.tiny import random_lora

    random_lora(tiny_model_dir, workspace.root / "adapter", ["q_proj", "v_proj"], r=4, std=0.1, seed=1)
    args = ["export", "gguf", "--adapter", "adapter", "--base", f"hf:{tiny_model_dir}", "--out", "a.gguf"]
    first = runner.invoke(cli, args)
    assert first.exit_code == 0 and "gguf-lora" in first.output, first.output
    mtime = (workspace.root / "a.gguf").stat().st_mtime_ns
    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "already exported" in again.output, again.output
    assert (workspace.root / "a.gguf").stat().st_mtime_ns == mtime
    with workspace.store() as store:
        rows = store.query("SELECT kind, sha256 FROM artifacts WHERE path = ?", (str(workspace.root / "a.gguf"),))
    assert [(r["kind"], len(r["sha256"])) for r in rows] == [("gguf-lora", 64)]


def test_lora_export_needs_a_base(tmp_path):
    from plumb.export import export_lora

    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 16, "r": 8,
                                                              "base_model_name_or_path": "some/hub-id"}))
    with pytest.raises(PlumbError, match="--base"):
        export_lora(tmp_path, tmp_path / "a.gguf")


def test_cli_export_q8_0(runner, tiny_model_dir, tmp_path):
    from plumb.cli import cli

    out = tmp_path / "m.gguf"
    result = runner.invoke(cli, ["export", "gguf", "--model", f"hf:{tiny_model_dir}", "--out", str(out),
                                 "--quant", "q8_0"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "gguf-q8_0" in result.output
    bad = runner.invoke(cli, ["export", "gguf", "--model", "llamacpp:x.gguf", "--out", str(out)])
    assert bad.exit_code == 2 and "Hugging Face model" in bad.output


@pytest.mark.slow
def test_starter_export_matches_transformers(tmp_path, real_starter):
    """The real SmolLM2 (dequantized HF copy) through plumb's exporter: same ids, same greedy text."""
    import llama_cpp

    from plumb.models import starter
    from plumb.export import export_gguf

    hf_dir = starter.hf_dir()
    out = export_gguf(hf_dir, tmp_path / "starter.f16.gguf", "f16")
    rendered, ids = chat_ids(hf_dir, "Write 3 tips for clear code, in 2025 style!")
    llm = llama_cpp.Llama(str(out), n_ctx=256, verbose=False)
    try:
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == ids
    finally:
        llm.close()
    chats = [Chat.from_user(p) for p in PROMPTS[:3]]
    hf = greedy(ModelSpec("hf", str(hf_dir)), chats, 24)
    ll = greedy(ModelSpec("llamacpp", str(out)), chats, 24)
    assert sum(a.text == b.text for a, b in zip(hf, ll)) >= 2
