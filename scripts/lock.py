"""Write constraints.txt: the installed versions of the project's dependency closure.

`pip freeze` would also pin whatever someone installed into the venv by hand (a
profiler, a library tried in a benchmark); walking the requirements from the
project's own metadata pins exactly what `pip install -e '.[dev]'` needs.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "async-load-bridge"
HEADER = (
    "# Pinned versions for a reproducible install (make test / make run use them as constraints).\n"
    "# Regenerate with: make lock\n"
)


def closure(root: str, extras: set[str]) -> dict[str, str]:
    """Installed name -> version for every distribution ``root[extras]`` requires."""
    pinned: dict[str, str] = {}
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset(extras))]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in seen:
            continue
        seen.add((name, wanted))
        dist = metadata.distribution(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not any(
                req.marker.evaluate({**default_environment(), "extra": e}) for e in (wanted or {""})
            ):
                continue
            dep = canonicalize_name(req.name)
            try:
                version = metadata.version(dep)
            except metadata.PackageNotFoundError:
                continue  # an optional requirement for another platform
            pinned[dep] = version
            todo.append((dep, frozenset(req.extras)))
    pinned.pop(canonicalize_name(root), None)
    return pinned


def main() -> None:
    pins = closure(ROOT, {"dev"})
    sys.stdout.write(HEADER + "".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))


if __name__ == "__main__":
    main()
