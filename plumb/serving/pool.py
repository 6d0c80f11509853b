"""A pool of HTTP servers that answer the same JSON API (OpenAI-compatible model servers).

* **Bounded concurrency**: each server has at most ``per_server`` requests in flight; a request goes to
  the healthy server with the fewest, and waits while every one is full.
* **Unreachable servers** (connection refused or reset, timeout) leave the rotation at once, and the
  request moves to another server. After a cool-down (``cooldown_s``, doubling while it keeps failing, at
  most ``COOLDOWN_MAX_S``) a probe, ``GET {url}/models``, brings the server back. ``map`` ends with a
  warning for each server that dropped requests during it: its URL, why, and how many moved elsewhere.
* **Busy servers** (HTTP 429 and 5xx): the server pauses for its ``Retry-After`` (seconds or an HTTP
  date) or else an exponential backoff (``backoff_s`` doubled per answer of the kind in a row), and the
  request is tried again there or elsewhere, at most ``retries`` more times. Any other HTTP error is
  raised at once, as is an answer that is not JSON.
* **All down**: once every server has failed ``DEAD_AFTER`` times in a row (its probes included) and is
  cooling down, requests raise ``BackendUnavailable`` naming each server and why. The next ``map``
  probes them all again at once.
* **Adapters on the servers** (``post(..., adapter=)``): a request for a LoRA adapter first loads it on
  the server it goes to, once, by vLLM's runtime LoRA API (``POST {url}/load_lora_adapter``; plumb's own
  ``plumb serve`` answers it too), so every server that takes such a request has it, including one that
  joins later. A server that went down may come back as a new process: what it had loaded is forgotten,
  and a request answered 404 (the server does not know the adapter's name: it restarted between two
  requests) loads it again and is retried there once. Each server keeps at most ``MAX_ADAPTERS`` of
  plumb's adapters; loading one more unloads the one used longest ago.
* ``map(fn, items)`` runs ``fn(item)`` on as many threads as the pool has slots and returns the results
  in input order. When the pool goes down it waits for the jobs in flight and raises
  ``BackendUnavailable`` whose ``finished`` holds every result that came back (None for the rest).

``pool_for(urls)`` keeps one pool per list of URLs for the process, so what it learnt about a server
outlives one call (the sample stage calls the backend once per chunk of prompts).
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import threading
import time
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from plumb.core.errors import BackendUnavailable, PlumbError

T = TypeVar("T")
R = TypeVar("R")

DEAD_AFTER = 3  # failures in a row (probes included) after which a server counts as down
COOLDOWN_MAX_S = 30.0
BACKOFF_MAX_S = 60.0  # the longest pause a busy server gets, Retry-After included
PROBE_TIMEOUT_S = 5.0
BUSY = {429} | set(range(500, 600))
MAX_ADAPTERS = 4  # plumb's LoRA adapters loaded on one server at a time


class ServerWarning(UserWarning):
    """A server of a pool went out of rotation."""


@dataclass
class Server:
    url: str
    in_flight: int = 0
    fails: int = 0  # connection failures in a row, probes included
    busy: int = 0  # 429/5xx answers in a row
    until: float = 0.0  # no requests before this time.monotonic()
    down: bool = False  # unreachable: a probe must pass before it takes requests again
    probing: bool = False
    reason: str = ""  # the last failure
    dropped: int = 0  # requests it failed to answer, moved to other servers
    adapters: dict[str, float] = field(default_factory=dict)  # adapter name -> last used (time.monotonic())
    loading: threading.Lock = field(default_factory=threading.Lock)  # one adapter load at a time


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter the servers load from ``path`` (a path on their file system) and serve as ``name``."""

    name: str
    path: str


class Refused(PlumbError):
    """The server answered an HTTP error that is not worth retrying elsewhere (``code``: its status)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Unreachable(Exception):
    """The server could not be reached or broke the connection (the request may go elsewhere)."""


class Busy(Exception):
    """The server answered 429 or 5xx; ``wait`` is its Retry-After in seconds, if it gave one."""

    def __init__(self, message: str, wait: float | None) -> None:
        super().__init__(message)
        self.wait = wait


def retry_after(value: str | None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds from now; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def send(url: str, body: dict[str, Any] | None, headers: dict[str, str], timeout: float, text: bool = False) -> Any:
    """One request (POST when ``body`` is given, else GET) -> the JSON answer (``text``: the answer's text, JSON
    or not); Unreachable, Busy or Refused."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace")
        if exc.code in BUSY:
            raise Busy(f"HTTP {exc.code}: {detail}", retry_after(exc.headers.get("Retry-After"))) from None
        raise Refused(f"{url} answered HTTP {exc.code}: {detail}", exc.code) from None
    except urllib.error.URLError as exc:
        raise Unreachable(str(exc.reason)) from None
    except TimeoutError:
        raise Unreachable(f"no answer within {timeout:g} s") from None
    except (OSError, http.client.HTTPException) as exc:  # reset, refused mid-request, a truncated answer
        raise Unreachable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    if text:
        return raw.decode("utf-8", "replace")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise PlumbError(f"{url} answered with something that is not JSON; is it an OpenAI-compatible server?") \
            from None


class Pool:
    def __init__(self, urls: list[str], per_server: int = 4, retries: int = 5, timeout_s: float = 300.0,
                 backoff_s: float = 0.5, cooldown_s: float = 1.0, headers: dict[str, str] | None = None) -> None:
        if not urls:
            raise PlumbError("a server pool needs at least one URL.", exit_code=2)
        if per_server < 1:
            raise PlumbError(f"at most {per_server} requests per server: it must be at least 1.", exit_code=2)
        self.servers = [Server(u.rstrip("/")) for u in urls]
        self.per_server, self.retries, self.timeout_s = per_server, retries, timeout_s
        self.backoff_s, self.cooldown_s = backoff_s, cooldown_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._cond = threading.Condition()

    @property
    def slots(self) -> int:
        return self.per_server * len(self.servers)

    # -- choosing a server ------------------------------------------------------------------

    def _all_down(self, now: float) -> bool:
        return all(s.fails >= DEAD_AFTER and s.until > now and not s.probing for s in self.servers)

    def down_message(self) -> str:
        listed = "; ".join(f"{s.url} ({s.reason or 'no answer'}, {s.fails} failures in a row)" for s in self.servers)
        return (f"cannot reach the OpenAI-compatible server{'s' if len(self.servers) > 1 else ''}: {listed}. "
                "Is it running (e.g. `python -m llama_cpp.server --model M.gguf`)?")

    def _acquire(self) -> Server:
        with self._cond:
            while True:
                now = time.monotonic()
                if self._all_down(now):
                    raise BackendUnavailable(self.down_message())
                ready = [s for s in self.servers if s.until <= now and not s.probing and s.in_flight < self.per_server]
                up = [s for s in ready if not s.down]
                if up:
                    server = min(up, key=lambda s: s.in_flight)
                    server.in_flight += 1
                    return server
                if ready:  # a down server whose cool-down is over: probe it, the lock released meanwhile
                    server = ready[0]
                    server.probing = True
                    self._cond.release()
                    try:
                        ok, why = self._probe(server)
                    finally:
                        self._cond.acquire()
                    server.probing = False
                    if ok:
                        server.down, server.fails = False, 0
                    else:
                        self._mark_down(server, why, request=False)
                    self._cond.notify_all()
                    continue
                waits = [s.until - now for s in self.servers if s.until > now]
                self._cond.wait(min(waits) if waits else None)

    def _probe(self, server: Server) -> tuple[bool, str]:
        try:
            send(server.url + "/models", None, self.headers, PROBE_TIMEOUT_S)
            return True, ""
        except (Unreachable, Busy, PlumbError) as exc:
            return False, str(exc)

    def _mark_down(self, server: Server, why: str, request: bool) -> None:
        """Out of rotation for a cool-down that doubles with each failure in a row (called with the lock
        held). Requests that were in flight when it went down count as dropped, not as more failures."""
        server.dropped += request
        if server.down and request:
            return
        server.down, server.reason = True, why
        server.adapters.clear()  # it may come back as a new process, without them
        server.fails += 1
        server.until = time.monotonic() + min(COOLDOWN_MAX_S, self.cooldown_s * 2 ** (server.fails - 1))

    # -- requests ---------------------------------------------------------------------------

    def _load(self, server: Server, adapter: Adapter) -> None:
        """``adapter`` on ``server`` unless plumb loaded it there already; the oldest of plumb's adapters
        there is unloaded first when it has ``MAX_ADAPTERS``. Unreachable or Busy as ``send`` (``post`` handles
        them as for the request itself)."""
        with server.loading:
            if adapter.name not in server.adapters:
                while len(server.adapters) >= MAX_ADAPTERS:
                    old = min(server.adapters, key=server.adapters.get)
                    del server.adapters[old]
                    try:
                        send(server.url + "/unload_lora_adapter", {"lora_name": old}, self.headers,
                             self.timeout_s, text=True)
                    except (Busy, Refused):
                        pass  # it stays loaded there: only the server's memory pays
                try:
                    send(server.url + "/load_lora_adapter", {"lora_name": adapter.name, "lora_path": adapter.path},
                         self.headers, self.timeout_s, text=True)
                except Refused as exc:
                    if "already" not in str(exc):  # vLLM: 400 "... has already been loaded"
                        raise PlumbError(f"{server.url} could not load the LoRA adapter {adapter.path}: {exc}. A vLLM "
                                         "server needs --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True, and "
                                         "must see the path on its own file system.") from None
            server.adapters[adapter.name] = time.monotonic()

    def post(self, path: str, body: dict[str, Any], adapter: Adapter | None = None) -> dict[str, Any]:
        """POST ``body`` to ``path`` on some server of the pool, retried as the module docstring says; with
        ``adapter``, it is loaded there first."""
        attempts, reloaded = 0, False
        while True:
            server = self._acquire()
            try:
                if adapter is not None:
                    self._load(server, adapter)
                answer = send(server.url + path, body, self.headers, self.timeout_s)
            except Refused as exc:
                with self._cond:
                    server.in_flight -= 1
                    self._cond.notify_all()
                if adapter is None or exc.code != 404 or reloaded:
                    raise
                server.adapters.pop(adapter.name, None)  # restarted since it loaded the adapter: load it again
                reloaded = True
                continue
            except Unreachable as exc:
                with self._cond:
                    server.in_flight -= 1
                    self._mark_down(server, str(exc), request=True)
                    self._cond.notify_all()
                continue
            except Busy as exc:
                attempts += 1
                with self._cond:
                    server.in_flight -= 1
                    server.busy += 1
                    server.reason = str(exc)
                    pause = exc.wait if exc.wait is not None else self.backoff_s * 2 ** (server.busy - 1)
                    server.until = max(server.until, time.monotonic() + min(BACKOFF_MAX_S, pause))
                    self._cond.notify_all()
                if attempts > self.retries:
                    raise PlumbError(f"{server.url}{path} answered {exc} ({attempts} tries; "
                                     "PLUMB_OPENAI_RETRIES sets how many retries).") from None
                continue
            except BaseException:
                with self._cond:
                    server.in_flight -= 1
                    self._cond.notify_all()
                raise
            with self._cond:
                server.in_flight -= 1
                server.busy = server.fails = 0
                self._cond.notify_all()
            return answer

    def map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """``[fn(item) for item in items]`` on up to ``slots`` threads, in input order. Each server that
        dropped requests meanwhile is named in a warning with their count."""
        dropped = [s.dropped for s in self.servers]
        with self._cond:
            if self._all_down(time.monotonic()):  # down at the last call: probe every server again now
                for server in self.servers:
                    server.until = 0.0
        results: list[Any] = [None] * len(items)
        errors: list[Exception] = []
        with ThreadPoolExecutor(max_workers=max(1, min(len(items), self.slots))) as ex:
            futures = {ex.submit(fn, item): i for i, item in enumerate(items)}
            try:
                for future in as_completed(futures):
                    try:
                        results[futures[future]] = future.result()
                    except Exception as exc:  # noqa: BLE001 - raised below, once the jobs in flight are done
                        if not errors:
                            for f in futures:
                                f.cancel()
                        errors.append(exc)
            except BaseException:  # KeyboardInterrupt: drop what has not started
                ex.shutdown(wait=False, cancel_futures=True)
                raise
        down = [e for e in errors if isinstance(e, BackendUnavailable)]
        if down:
            raise BackendUnavailable(str(down[0]), results)
        if errors:
            raise errors[0]
        for server, before in zip(self.servers, dropped):
            if server.dropped > before:
                warnings.warn(f"server {server.url} is unreachable ({server.reason}): skipped, "
                              f"{server.dropped - before} request(s) moved to the other servers; it is back in "
                              "rotation once a probe (GET /models) answers.", ServerWarning, stacklevel=2)
        return results


def env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PlumbError(f"{name}={raw!r} is not a number.", exit_code=2) from None
    if not math.isfinite(value) or value < minimum:
        raise PlumbError(f"{name}={raw!r}: it must be at least {minimum:g}.", exit_code=2)
    return value


_POOLS: dict[tuple[str, ...], Pool] = {}
_POOLS_LOCK = threading.Lock()


def pool_for(urls: list[str], headers: dict[str, str] | None = None) -> Pool:
    """The process's pool for these URLs, made on first use with the settings from the environment:
    ``PLUMB_OPENAI_CONCURRENCY`` requests per server (4), ``PLUMB_OPENAI_RETRIES`` retries of a busy
    answer (5), ``PLUMB_HTTP_TIMEOUT`` seconds per request (300). ``headers`` are sent with every request."""
    key = tuple(u.rstrip("/") for u in urls)
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = Pool(list(key), per_server=int(env_number("PLUMB_OPENAI_CONCURRENCY", 4, 1)),
                                      retries=int(env_number("PLUMB_OPENAI_RETRIES", 5, 0)),
                                      timeout_s=env_number("PLUMB_HTTP_TIMEOUT", 300.0, 0.001))
        pool.headers = {"Content-Type": "application/json", **(headers or {})}
        return pool
