"""API keys as data: the token format, the stored record, scopes, and the limits a key
carries (issue #16). Pure: no I/O; ``bridge.tenancy`` stores and enforces them.

**The token.** ``alb_<id>_<secret>``: ``id`` is 12 hex characters (what the access
log, the metrics and ``alb keys`` name the key by), ``secret`` 32 random bytes
(``secrets.token_urlsafe``). Only ``digest(token)`` is stored: HMAC-SHA256 keyed with
``ALB_KEYS_PEPPER`` (a fixed domain key when unset). A keyed hash, not argon2id: the
secret has 256 bits of entropy, so a stolen digest cannot be brute-forced however
fast the hash (argon2id's slowness protects low-entropy passwords, which these are
not), while argon2id would cost ~50 ms of CPU on every request, or a cache of
plaintext-equivalent results; the pepper, kept out of the store, also makes a leaked
store useless for checking guesses offline.

**Scopes.** ``inference`` (the generate, chat, embed and completion routes, for the
models the key's ``models`` patterns allow: ``fnmatch`` on the normalised name, all
when empty), ``read`` (tags, ps, show, model lists, ``/alb/v1/models``, events,
status) and ``admin`` (load, unload, pin, unpin, decisions, and the store-changing
routes). ``/healthz``, ``/readyz`` and ``/metrics`` need none (probes and scrapers).

**Limits.** Requests per minute (a moving window: exact), tokens per minute (prompt
plus output; a sliding-window counter: the estimate is reserved up front and the
difference to the final frame's counts settled afterwards), concurrent requests, a
daily token budget (UTC days), and a priority that weights the key's turns in each
model's fair queue. ``None``: no limit.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

PREFIX = "alb_"
_ID_HEX = 12
_TOKEN = re.compile(r"^alb_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")
#: The HMAC key when ``ALB_KEYS_PEPPER`` is unset (a domain separator, not a secret).
DEFAULT_PEPPER = b"alb-keys-v1"
#: Largest priority class (the weight of a key's turns in a model's fair queue).
PRIORITY_MAX = 16


class Scope(Enum):
    INFERENCE = "inference"
    READ = "read"
    ADMIN = "admin"


ALL_SCOPES = frozenset(Scope)


def parse_scopes(text: str | Iterable[str]) -> frozenset[Scope]:
    """``"inference,read"`` -> the scopes; ``ValueError`` naming an unknown one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: set[Scope] = set()
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        try:
            out.add(Scope(item))
        except ValueError:
            known = ", ".join(s.value for s in Scope)
            raise ValueError(f"unknown scope {item!r} (known: {known})") from None
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Limits:
    """A key's limits; ``None`` is no limit."""

    rpm: int | None = None
    tpm: int | None = None
    concurrency: int | None = None
    daily_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in ("rpm", "tpm", "concurrency", "daily_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer or unset")

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.concurrency, self.daily_tokens))

    def share(self, replicas: int) -> Limits:
        """This replica's part when it must enforce the limits alone (Redis down): each
        limit divided by ``replicas`` (the most seen in the last minute: ``Quotas``),
        rounded down, at least 1. Summed over the replicas it is the limit, except a
        limit below the replica count, which becomes one per replica (documented: the
        only way a limit grows)."""
        n = max(1, replicas)

        def part(v: int | None) -> int | None:
            return None if v is None else max(1, v // n)

        return Limits(
            part(self.rpm), part(self.tpm), part(self.concurrency), part(self.daily_tokens)
        )


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store holds of one key (never the token)."""

    id: str
    name: str
    digest: str
    scopes: frozenset[Scope]
    models: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    priority: int = 1
    created_at: float = 0.0
    revoked_at: float | None = None
    rotated_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows_model(self, model: str) -> bool:
        """``model`` (a normalised name) is one of the key's patterns (all when none)."""
        if not self.models:
            return True
        return any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def to_json(self) -> dict[str, Any]:
        lim = self.limits
        return {
            "id": self.id,
            "name": self.name,
            "digest": self.digest,
            "scopes": sorted(s.value for s in self.scopes),
            "models": list(self.models),
            "limits": {
                "rpm": lim.rpm,
                "tpm": lim.tpm,
                "concurrency": lim.concurrency,
                "daily_tokens": lim.daily_tokens,
            },
            "priority": self.priority,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "rotated_at": self.rotated_at,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> KeyRecord:
        lim = doc.get("limits") or {}
        return cls(
            id=str(doc["id"]),
            name=str(doc.get("name", "")),
            digest=str(doc["digest"]),
            scopes=parse_scopes(doc.get("scopes", ())),
            models=tuple(str(m) for m in doc.get("models", ())),
            limits=Limits(
                lim.get("rpm"), lim.get("tpm"), lim.get("concurrency"), lim.get("daily_tokens")
            ),
            priority=int(doc.get("priority", 1)),
            created_at=float(doc.get("created_at", 0.0)),
            revoked_at=doc.get("revoked_at"),
            rotated_at=doc.get("rotated_at"),
        )

    def public(self) -> dict[str, Any]:
        """The record without its digest (what ``alb keys list`` shows)."""
        out = self.to_json()
        del out["digest"]
        return out


def check_priority(priority: int) -> int:
    if isinstance(priority, bool) or not 1 <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority must be 1 .. {PRIORITY_MAX}")
    return priority


def check_patterns(models: Iterable[str]) -> tuple[str, ...]:
    out = tuple(m.strip() for m in models if m.strip())
    for m in out:
        if len(m) > 200 or any(c.isspace() for c in m):
            raise ValueError(f"model pattern {m!r}: no spaces, at most 200 characters")
    return out


def digest(token: str, pepper: bytes | None = None) -> str:
    return hmac.new(pepper or DEFAULT_PEPPER, token.encode(), hashlib.sha256).hexdigest()


def mint(pepper: bytes | None = None) -> tuple[str, str, str]:
    """A new ``(token, id, digest)``."""
    ident = secrets.token_hex(_ID_HEX // 2)
    token = f"{PREFIX}{ident}_{secrets.token_urlsafe(32)}"
    return token, ident, digest(token, pepper)


def remint(ident: str, pepper: bytes | None = None) -> tuple[str, str]:
    """A new ``(token, digest)`` for an existing id (``rotate``)."""
    token = f"{PREFIX}{ident}_{secrets.token_urlsafe(32)}"
    return token, digest(token, pepper)


def token_id(token: str) -> str | None:
    """The id inside a well-formed token, else None (never raises)."""
    m = _TOKEN.match(token)
    return m.group(1) if m else None


def verify(record: KeyRecord, token: str, pepper: bytes | None = None) -> bool:
    return hmac.compare_digest(record.digest, digest(token, pepper))


def revoked(record: KeyRecord, now: float) -> KeyRecord:
    return replace(record, revoked_at=now)


# --- who is asking -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request: a key, the admin token, or nobody (keys off)."""

    scopes: frozenset[Scope]
    key: KeyRecord | None = None
    #: Authenticated by ``ALB_ADMIN_TOKEN``.
    admin_token: bool = False

    @property
    def key_id(self) -> str | None:
        return None if self.key is None else self.key.id

    def allows_model(self, model: str) -> bool:
        return self.key is None or self.key.allows_model(model)


#: Keys off (``ALB_AUTH=none``): every scope (the admin routes keep their own rule).
ANONYMOUS = Principal(ALL_SCOPES)
#: The admin token: ``admin`` and ``read``, not inference.
ADMIN_TOKEN = Principal(frozenset({Scope.ADMIN, Scope.READ}), admin_token=True)

_OPEN = frozenset({"/healthz", "/readyz", "/metrics"})
_INFERENCE = frozenset(
    {
        "/api/generate",
        "/api/chat",
        "/api/embed",
        "/api/embeddings",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
    }
)
_STORE = frozenset(
    {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete", "/api/blobs"}
)


def scope_for(path: str) -> Scope | None:
    """The scope a path needs (``None``: open). Unknown paths need ``read`` (they 404
    for a holder, 401 for a stranger, as any route would)."""
    if path in _OPEN or path == "/alb/ui" or path.startswith("/alb/ui/"):
        # The status page's shell (HTML, script, style) holds no data: a browser cannot
        # send a key on a plain navigation. The JSON it fetches needs the key it is given.
        return None
    if path in _INFERENCE:
        return Scope.INFERENCE
    if path.startswith("/alb/v1/models/") or path == "/alb/v1/decisions":
        return Scope.ADMIN
    if path in _STORE or path.startswith("/api/blobs/"):
        return Scope.ADMIN
    return Scope.READ


# --- tokens per request ---------------------------------------------------------------


def reserve_tokens(prompt_chars: int, max_output: int | None, output_reserve: int) -> int:
    """Tokens a request reserves against its key's tokens-per-minute and daily budget
    before it runs: the prompt at 4 characters a token, plus the requested output cap
    (``max_tokens`` / ``num_predict``) or ``output_reserve`` when none, whichever is
    smaller. Settled against the final frame's counts afterwards."""
    capped = max_output is not None and max_output >= 0
    out = min(max_output, output_reserve) if capped and max_output is not None else output_reserve
    return max(1, math.ceil(prompt_chars / 4) + out)


def reset_text(seconds: float) -> str:
    """OpenAI's ``x-ratelimit-reset-*`` form: ``1s``, ``6m0s``, ``1h2m3s``, ``250ms``."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    s = math.ceil(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h{m}m{sec}s"
    if m:
        return f"{m}m{sec}s"
    return f"{sec}s"
