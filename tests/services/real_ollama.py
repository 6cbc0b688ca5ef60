"""pytest plugin: the session fixture ``real_ollama`` (a real ``ollama serve`` on CPU).

The binary comes from ``OLLAMA_BIN``, else from the cache that ``scripts/build-ollama``
fills (``$ALB_CACHE_DIR/ollama/<version>/ollama``, newest version first). With none
the tests that use the fixture are *skipped*, even under ``CI=true`` (a real Ollama
is optional), unless ``ALB_REQUIRE_REAL_OLLAMA=1``, which makes a missing or broken
binary fail them.

The server runs on a free loopback port with a throwaway ``OLLAMA_MODELS`` and
``HOME``; two tiny random-weight models are created in it from GGUFs written by
``scripts/make_tiny_gguf.py``: ``tiny`` (llama architecture, completion) and
``tiny-embed`` (bert architecture, mean pooling, embedding only). Both load in well
under a second on a CPU. The server's log is kept at ``<tmp>/serve.log`` and its tail
is shown when something goes wrong.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import pytest

from tests.services._env import (
    REPO_ROOT,
    cache_dir,
    env_flag,
    free_port,
    spawn,
    stop_process,
    tail,
    unavailable,
)

MODEL = "tiny"
EMBED_MODEL = "tiny-embed"


@dataclass(frozen=True)
class RealOllama:
    """A running real Ollama: where it listens and which models it has."""

    base_url: str
    model: str
    embed_model: str | None
    binary: str
    version: str


def _unavailable(msg: str) -> NoReturn:
    # Not in_ci(): a real Ollama is optional under CI=true unless this asks for it.
    required = env_flag("ALB_REQUIRE_REAL_OLLAMA")
    unavailable(msg, required=required, why="ALB_REQUIRE_REAL_OLLAMA=1")


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def find_binary() -> Path | None:
    """``OLLAMA_BIN`` if set (it must exist), else the newest build in the cache."""
    given = os.environ.get("OLLAMA_BIN", "").strip()
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            found = shutil.which(given)
            return Path(found) if found else None
        return path
    builds = sorted(
        (p for p in (cache_dir() / "ollama").glob("*/ollama") if os.access(p, os.X_OK)),
        key=lambda p: _version_key(p.parent.name),
        reverse=True,
    )
    return builds[0] if builds else None


def _http(method: str, url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read().decode()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _load_gguf_maker() -> ModuleType:
    """Import ``scripts/make_tiny_gguf.py`` (``scripts`` is not a package)."""
    name = "alb_make_tiny_gguf"
    if name in sys.modules:
        return sys.modules[name]
    path = REPO_ROOT / "scripts" / "make_tiny_gguf.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class _Server:
    def __init__(self, binary: Path, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "serve.log"
        home = workdir / "home"
        models = workdir / "models"
        home.mkdir()
        models.mkdir()
        self.env = {
            # The host's OLLAMA_* settings must not leak in (OLLAMA_DEBUG may).
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith("OLLAMA_") or k == "OLLAMA_DEBUG"
            },
            "HOME": str(home),
            "OLLAMA_HOST": f"127.0.0.1:{self.port}",
            "OLLAMA_MODELS": str(models),
            "OLLAMA_NOPRUNE": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60.0) -> None:
        # spawn: the kernel SIGTERMs the server if pytest dies (Linux; no-op elsewhere).
        self.proc = spawn([str(self.binary), "serve"], log=self.log, cwd=self.workdir, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ollama serve exited with {self.proc.returncode}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if "Ollama is running" in str(_http("GET", self.base_url + "/", timeout=1.0)):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"ollama serve did not answer GET / within {timeout_s:.0f}s")

    def create(self, name: str, gguf: Path) -> None:
        (self.workdir / f"Modelfile.{name}").write_text(f"FROM {gguf}\n")
        done = subprocess.run(
            [str(self.binary), "create", name, "-f", f"Modelfile.{name}"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ollama create {name} failed: {done.stderr.strip()[-800:]}")

    def version(self) -> str:
        with contextlib.suppress(Exception):
            return str(_http("GET", self.base_url + "/api/version")["version"])
        return "unknown"

    def stop(self) -> None:
        if self.proc is not None:
            # The server's runners are its children in the same session: signal the group.
            stop_process(self.proc, grace_s=15, group=True)


def _attempt(step: str, fn: Callable[[], None], server: _Server) -> str:
    """Run ``fn``; return "" or a message naming ``step`` with the server log's tail."""
    try:
        fn()
    except Exception as exc:  # any failure here means "no real Ollama"
        return f"real Ollama: {step}: {exc}\n--- {server.log} (tail) ---\n{tail(server.log, 15)}"
    return ""


@pytest.fixture(scope="session")
def real_ollama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealOllama]:
    """A real ``ollama serve`` with the tiny models ``tiny`` and ``tiny-embed``."""
    binary = find_binary()
    if binary is None:
        given = os.environ.get("OLLAMA_BIN", "").strip()
        where = f" (OLLAMA_BIN={given!r} is not a file)" if given else ""
        _unavailable(
            f"real Ollama not available: set OLLAMA_BIN or run scripts/build-ollama{where}"
        )
    workdir = Path(tempfile.mkdtemp(prefix="alb-ollama-", dir=tmp_path_factory.getbasetemp()))
    server = _Server(binary.resolve(), workdir)
    embed: str | None = EMBED_MODEL

    def create_models() -> None:
        maker = _load_gguf_maker()
        server.create(MODEL, maker.write_tiny_llama(workdir / "tiny.gguf"))
        server.create(EMBED_MODEL, maker.write_tiny_bert(workdir / "tiny-embed.gguf"))

    problem = _attempt("start", server.start, server) or _attempt(
        "create models", create_models, server
    )
    if problem:
        server.stop()
        _unavailable(problem)
    tags = {m["name"] for m in _http("GET", server.base_url + "/api/tags")["models"]}
    if f"{EMBED_MODEL}:latest" not in tags:
        embed = None
    try:
        yield RealOllama(
            base_url=server.base_url,
            model=MODEL,
            embed_model=embed,
            binary=str(binary),
            version=server.version(),
        )
    finally:
        server.stop()
