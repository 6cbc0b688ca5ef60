"""Model names as Ollama normalises them.

``llama3``, ``llama3:latest``, ``LLaMA3`` and ``registry.ollama.ai/library/llama3``
are one model. Ollama's ``model.ParseName`` fills a default host
(``registry.ollama.ai``), namespace (``library``) and tag (``latest``), compares
case-insensitively, and ``DisplayShortest`` drops the default host and namespace
but keeps the tag, which is why ``/api/ps`` and ``/api/tags`` show
``llama3:latest``.
"""

from __future__ import annotations

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"


def split(name: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) with Ollama's defaults filled in."""
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
    return bool(model) and bool(namespace) and bool(tag)


def display_shortest(name: str) -> str:
    """What Ollama prints: default host/namespace dropped, tag kept."""
    host, namespace, model, tag = split(name)
    if host.lower() != DEFAULT_HOST:
        return f"{host}/{namespace}/{model}:{tag}"
    if namespace.lower() != DEFAULT_NAMESPACE:
        return f"{namespace}/{model}:{tag}"
    return f"{model}:{tag}"


def full_name(name: str) -> str:
    host, namespace, model, tag = split(name)
    return f"{host}/{namespace}/{model}:{tag}"


def normalize(name: str) -> str:
    """Comparison key: case-insensitive, defaults filled, shortest form."""
    return display_shortest(name).lower()


def namespace_of(name: str) -> str:
    return split(name)[1]
