"""`plumb serve`: an OpenAI-compatible server over llama.cpp whose LoRA adapters load at run time.

    plumb serve starter --port 8001
    plumb serve models/my.q8_0.gguf --host 0.0.0.0 --port 8001 --hf models/my-hf

It answers what a vLLM server with runtime LoRA updating answers (``plumb.llamacpp.server``), so a pool of
them serves GRPO's rollouts (``-o rollouts='"openai:http://h1:8001/v1,http://h2:8001/v1"'``) and any
``openai:URL+lora:ADAPTER_DIR`` spec.
"""

from __future__ import annotations

import signal

import click

from plumb.core.errors import PlumbError


@click.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="The port.")
@click.option("--hf", "hf_dir", type=click.Path(file_okay=False),
              help="The Hugging Face copy of MODEL that peft adapters are converted against (default: the "
                   "base named in each adapter's adapter_config.json).")
@click.option("--verbose", is_flag=True, help="Log every request.")
def serve(model: str, host: str, port: int, hf_dir: str | None, verbose: bool) -> None:
    """Serve MODEL (a GGUF, or starter) on /v1/chat/completions, with LoRA adapters loaded and unloaded
    at run time by POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's API)."""
    from plumb.llamacpp.server import make_server
    from plumb.models.specs import parse_spec

    spec = parse_spec(model if ":" in model or model == "starter" else f"llamacpp:{model}", role="generate")
    if spec.backend != "llamacpp" or spec.lora:
        raise PlumbError(f"plumb serve serves a GGUF (PATH.gguf or starter), not {model!r}.", exit_code=2)
    if hf_dir is None and model == "starter":
        hf_dir = parse_spec("starter", role="train").target
    server = make_server(spec.target, host, port, hf_dir, verbose)
    bound = server.server_address
    click.echo(f"serving {spec.target} on http://{bound[0]}:{bound[1]}/v1 (Ctrl-C stops)", err=True)

    def stop(signum, frame):  # SIGTERM too: the converted adapters are removed on the way out
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def register(cli: click.Group) -> None:
    cli.add_command(serve)
