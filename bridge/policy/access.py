"""Access rules the settings validate with, pure: the origins and trusted-proxy
networks an operator may configure (``bridge.http.edge`` applies them)."""

from __future__ import annotations

import ipaddress

#: Origins without a ``*`` must start with one of these (gin-contrib/cors refuses to
#: start otherwise; Ollama sets ``AllowBrowserExtensions``).
ORIGIN_SCHEMES = (
    "http://",
    "https://",
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)


def split_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",") if p.strip()]


def check_origins(text: str) -> str:
    """``ALB_ORIGINS`` as gin-contrib/cors validates ``OLLAMA_ORIGINS``; ValueError if bad."""
    for origin in split_list(text):
        if origin.count("*") > 1:
            raise ValueError(f"{origin!r}: only one * is allowed")
        if "*" not in origin and not origin.lower().startswith(ORIGIN_SCHEMES):
            raise ValueError(f"{origin!r}: an origin must contain * or start with http(s)://")
    return text


def check_networks(text: str) -> str:
    """``ALB_TRUSTED_PROXIES``: IPs or CIDRs; ValueError if one is not."""
    for item in split_list(text):
        ipaddress.ip_network(item, strict=False)
    return text
