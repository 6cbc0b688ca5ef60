"""One fidelity suite, two targets: the simulator and a real ``ollama serve``.

Every test in ``tests/contract`` takes the ``target`` fixture, which is parametrised
over ``["sim", "real"]``:

* ``sim`` starts a small fleet with ``ollamasim.testing.serve_in_thread`` (once per
  session) and points at its first daemon.
* ``real`` uses the ``real_ollama`` fixture from ``tests/services/real_ollama.py``
  (which skips when no ``OLLAMA_BIN`` is available). When that fixture does not
  exist at all, the real parametrisation is skipped with a clear reason.

Each assertion in the suite cites the Ollama source it comes from; the facts are
collected in ``tests/contract/OLLAMA_FACTS.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from tests.contract._support import (
    SIM_EMBED_MODEL,
    SIM_FLEET,
    SIM_MODEL,
    Target,
    unload_all,
)

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def sim_fleet() -> Iterator[Any]:
    try:
        from ollamasim.testing import serve_in_thread  # noqa: PLC0415
    except ImportError as exc:  # the simulator has not landed yet
        pytest.fail(f"ollamasim.testing.serve_in_thread is not available: {exc}")
    with serve_in_thread(SIM_FLEET) as fleet:
        yield fleet


@pytest.fixture(
    scope="session", params=["sim", pytest.param("real", marks=pytest.mark.ollama_real)]
)
def target(request: pytest.FixtureRequest) -> Target:
    if request.param == "sim":
        fleet = request.getfixturevalue("sim_fleet")
        return Target(
            kind="sim",
            base_url=str(fleet.daemons[0].base_url).rstrip("/"),
            model=SIM_MODEL,
            embed_model=SIM_EMBED_MODEL,
            supports_faults=True,
            fleet=fleet,
        )
    try:
        real = request.getfixturevalue("real_ollama")
    except pytest.FixtureLookupError:
        pytest.skip("no real_ollama fixture (tests/services/real_ollama.py) is defined")
    return Target(
        kind="real",
        base_url=str(real.base_url).rstrip("/"),
        model=str(real.model),
        embed_model=getattr(real, "embed_model", None),
        supports_faults=False,
    )


@pytest.fixture
def fresh(target: Target) -> Iterator[Target]:
    """The target with nothing loaded at the start of the test (and nothing pinned after)."""
    unload_all(target)
    yield target
    with contextlib.suppress(Exception):
        unload_all(target)


@pytest.fixture
def embed_target(target: Target) -> Target:
    if target.embed_model is None:
        pytest.skip(f"{target.kind}: no embedding-only model available")
    return target


@pytest.fixture
def sim_only(target: Target) -> Target:
    if target.kind != "sim":
        pytest.skip("sim only (see the test's docstring for why)")
    return target
