"""Model names the way Ollama compares them (``types/model.ParseName``).

``llama3``, ``LLaMA3:latest`` and ``registry.ollama.ai/library/llama3`` are one
model: a default host (``registry.ollama.ai``), namespace (``library``) and tag
(``latest``) are filled in and the comparison ignores case. ``display`` is
Ollama's ``DisplayShortest`` (what ``/api/ps`` and ``/api/tags`` print).
Cloud models (tag ``cloud`` or ending in ``-cloud``) are forwarded by Ollama to
ollama.com; the bridge refuses them.
"""

from __future__ import annotations

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def split(name: str) -> tuple[str, str, str, str]:
    """``(host, namespace, model, tag)`` with Ollama's defaults filled in."""
    rest = name.strip()
    tag = DEFAULT_TAG
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :] or DEFAULT_TAG
    parts = rest.split("/")
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(parts) >= 3:
        host, namespace, model = parts[-3], parts[-2], parts[-1]
    elif len(parts) == 2:
        namespace, model = parts
    else:
        model = parts[0]
    return host, namespace, model, tag


def is_valid(name: str) -> bool:
    _, namespace, model, tag = split(name)
    return bool(model and namespace and tag)


def display(name: str) -> str:
    host, namespace, model, tag = split(name)
    if host.lower() != DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def key(name: str) -> str:
    """Comparison key: case-insensitive, defaults filled, shortest form."""
    return display(name).lower()


def namespace(name: str) -> str:
    return split(name)[1]


def is_cloud(name: str) -> bool:
    tag = split(name)[3].lower()
    return tag == "cloud" or tag.endswith("-cloud")
