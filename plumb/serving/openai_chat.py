"""Chat completions and option log-probs from OpenAI-compatible servers, over a pool.

A target is ``URL[,URL...][#MODEL]``: one or more base URLs (``http://HOST:PORT/v1``) that serve the
same model, and the model name to ask for ("default" if none). Chats are spread over the pool
(``plumb.serving.pool``) and come back in input order.

``n`` is asked for in one request; servers that ignore it (llama_cpp.server does) are asked again
until there are ``n`` answers, with ``seed + i`` when a seed is set. ``OPENAI_API_KEY`` is sent as a
bearer token when set, and never echoed.

A spec with ``+lora:ADAPTER[@SCALE]`` asks for that adapter: the pool loads it on each server it sends to
(vLLM's runtime LoRA API, see ``plumb.serving.pool``) under a name made from the adapter's path, the time
its weights were written and the scale, and the requests name it as their model. ADAPTER is a peft
adapter directory (what vLLM loads; ``plumb serve`` also takes a GGUF LoRA) on a path the servers can read.
A scale other than 1 is served from a copy beside it, ``ADAPTER-xSCALE``, whose B matrices are scaled.
With ``logprobs`` each completion carries its sampled tokens' log-probs (``token_logprobs``); ``token_ids``
asks for their ids too, by vLLM's ``return_tokens_as_token_ids`` (``plumb serve`` answers it; servers that
ignore it leave ``Completion.token_ids`` None).

``option_logprobs`` asks for one token at temperature 0 with ``logprobs: true, top_logprobs: 20``
(llama.cpp's server and vLLM answer it) and reads the options off that first token: an option's
log-prob is the log of the summed probability of the listed tokens whose text the option starts with
(the rest of the option is not scored: a server cannot teacher-force it); an option none of them starts
is given the smallest listed log-prob (its probability is at most that). None when the server returns
no log-probs, so the caller falls back to parsing sampled text.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

from plumb.core.errors import PlumbError
from plumb.core.records import Chat, Completion, ModelSpec, SamplingParams
from plumb.serving.pool import Adapter, Pool, pool_for

TOP_LOGPROBS = 20  # the most OpenAI's API and vLLM's default allow


def split_target(target: str) -> tuple[list[str], str]:
    """``URL[,URL...][#MODEL]`` -> (base URLs, model name; "default" if none)."""
    urls, _, name = target.partition("#")
    parts = [u.strip().rstrip("/") for u in urls.split(",")]
    bad = [u for u in parts if not u.startswith(("http://", "https://"))]
    if bad:
        raise PlumbError(f"bad openai model spec {target!r}: expected openai:http://HOST:PORT/v1[,http://...][#MODEL] "
                         f"(not a URL: {bad[0]!r}).", exit_code=2)
    return list(dict.fromkeys(parts)), name or "default"


def pool_of(model: ModelSpec) -> tuple[Pool, str]:
    urls, name = split_target(model.target)
    key = os.environ.get("OPENAI_API_KEY")
    return pool_for(urls, {"Authorization": f"Bearer {key}"} if key else None), name


def served(model: ModelSpec) -> tuple[Pool, str, Adapter | None]:
    """(the pool, the model name the requests ask for, the adapter loaded first): the adapter's name when the
    spec has one (``adapter_of``), else the target's ``#MODEL``."""
    pool, name = pool_of(model)
    adapter = adapter_of(model)
    return pool, adapter.name if adapter else name, adapter


def _weights(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (path / name).is_file():
            return path / name
    raise PlumbError(f"LoRA adapter {path}: not a peft adapter directory (no adapter_model.safetensors) "
                     "nor a file.", exit_code=2)


def adapter_of(model: ModelSpec) -> Adapter | None:
    """The spec's LoRA as the pool loads it (see the module docstring); None without one or at scale 0."""
    if not model.lora or model.lora_scale == 0:
        return None
    path = Path(model.lora).expanduser().resolve()
    if model.lora_scale != 1.0:
        if not (path / "adapter_model.safetensors").is_file():
            raise PlumbError(f"LoRA adapter {path}: a scale other than 1 needs a peft directory with "
                             "adapter_model.safetensors.", exit_code=2)
        from plumb.export.lora_to_gguf import scaled_adapter

        path = Path(scaled_adapter(str(path), model.lora_scale))
    stat = _weights(path).stat()
    digest = hashlib.sha256(f"{path}:{stat.st_mtime_ns}:{stat.st_size}".encode()).hexdigest()[:16]
    return Adapter(f"plumb-{digest}", str(path))


def to_completion(choice: dict[str, Any], usage: dict[str, Any], name: str, params: SamplingParams,
                  choices: int = 1) -> Completion:
    """One choice of an answer with ``choices`` of them. Its token count is its log-probs' length when it has
    them, else the answer's usage divided among its choices (servers count the tokens of all of them)."""
    try:
        text = choice["message"]["content"] or ""
    except (KeyError, TypeError):
        raise PlumbError(f"malformed chat completion from {name}: a choice has no message content.") from None
    lps = chosen = ids = None
    content = (choice.get("logprobs") or {}).get("content") if params.logprobs else None
    if content:
        lps = [{alt["token"]: float(alt["logprob"]) for alt in tok.get("top_logprobs", [])} for tok in content]
        chosen = [float(tok["logprob"]) for tok in content if "logprob" in tok]
        spelled = [str(tok.get("token", "")) for tok in content]
        if all(t.startswith("token_id:") for t in spelled):
            ids = [int(t.removeprefix("token_id:")) for t in spelled]
    tokens = len(content) if content else round(int(usage.get("completion_tokens", 0)) / max(1, choices))
    return Completion(text=text, model=name, backend="openai", finish_reason=choice.get("finish_reason") or "stop",
                      prompt_tokens=int(usage.get("prompt_tokens", 0)), completion_tokens=tokens, top_logprobs=lps,
                      token_logprobs=chosen, params=params.to_dict(), token_ids=ids)


def choices_of(data: Any, model: ModelSpec) -> list[dict[str, Any]]:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices:
        raise PlumbError(f"malformed chat completion from {model}: no choices in {str(data)[:200]!r}.")
    return choices


def complete_chat(pool: Pool, name: str, model: ModelSpec, chat: Chat, params: SamplingParams,
                  adapter: Adapter | None = None, token_ids: bool = False) -> list[Completion]:
    out: list[Completion] = []
    while len(out) < params.n:
        body: dict[str, Any] = {
            "model": name, "messages": chat.to_dicts(), "n": params.n - len(out),
            "temperature": params.temperature, "top_p": params.top_p, "max_tokens": params.max_tokens,
        }
        if params.seed is not None:
            body["seed"] = params.seed + len(out)
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs:
            body.update(logprobs=True, top_logprobs=params.logprobs)
            if token_ids:
                body["return_tokens_as_token_ids"] = True
        data = pool.post("/chat/completions", body, adapter)
        choices = choices_of(data, model)
        out += [to_completion(c, data.get("usage") or {}, str(model), params, len(choices)) for c in choices]
    return out[: params.n]


def generate(model: ModelSpec, chats: list[Chat], params: SamplingParams,
             token_ids: bool = False) -> list[list[Completion]]:
    """``params.n`` completions per chat, in order (``token_ids``: see the module docstring)."""
    pool, name, adapter = served(model)
    return pool.map(lambda chat: complete_chat(pool, name, model, chat, params, adapter, token_ids), chats)


def first_token_logprobs(pool: Pool, name: str, model: ModelSpec, chat: Chat,
                         adapter: Adapter | None = None) -> dict[str, float] | None:
    body = {"model": name, "messages": chat.to_dicts(), "max_tokens": 1, "temperature": 0.0,
            "logprobs": True, "top_logprobs": TOP_LOGPROBS}
    choice = choices_of(pool.post("/chat/completions", body, adapter), model)[0]
    content = (choice.get("logprobs") or {}).get("content")
    if not content or not content[0].get("top_logprobs"):
        return None
    return {alt["token"]: float(alt["logprob"]) for alt in content[0]["top_logprobs"]}


def score_options(top: dict[str, float], options: list[str]) -> dict[str, float]:
    """{option: log p} from the first token's top log-probs, by the rule in the module docstring."""
    floor = min(top.values())
    row = {}
    for option in dict.fromkeys(options):
        if not option:
            row[option] = 0.0
            continue
        hits = [lp for tok, lp in top.items() if tok and option.startswith(tok)]
        top_hit = max(hits, default=floor)
        row[option] = top_hit + math.log(sum(math.exp(lp - top_hit) for lp in hits)) if hits else floor
    return row


def option_logprobs(model: ModelSpec, chats: list[Chat], options: list[str]) -> list[dict[str, float]] | None:
    pool, name, adapter = served(model)
    tops = pool.map(lambda chat: first_token_logprobs(pool, name, model, chat, adapter), chats)
    if any(top is None for top in tops):
        return None
    return [score_options(top, options) for top in tops]
