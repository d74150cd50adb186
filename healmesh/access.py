"""Who may call what, and how large a body may be, decided before a route reads a byte.

Every gateway and scorer route has a rule (``RouteRule``): its credential (public, labeller,
alerts, admin), its largest body, and whether its body must be JSON. ``AccessGuard``, an ASGI
middleware in front of everything else the service runs, applies the rule: a missing or
wrong credential is answered 401 and an oversize body 413 without reading the body (a 100 MB
body to an admin route with no token used to be read in full: 4.8 s and +392 MB of RSS), a
non-JSON body 415, and a JSON body with duplicate keys, NaN or nesting too deep 400/422 before
the route sees it. The rules are data (``gateway_policy`` / ``scorer_policy``) so that the
threat model in docs/architecture.md can be read off them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from healmesh.credentials import bearer, matches
from healmesh.errors import HealmeshError, InvalidData

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class Access(StrEnum):
    PUBLIC = "public"
    LABELLER = "labeller"  # labels (POST /feedback); the admin token may label too
    ALERTS = "alerts"  # Alertmanager's webhook (POST /alerts); the admin token may post alerts too
    ADMIN = "admin"


@dataclass(frozen=True)
class RouteRule:
    prefix: str  # a path, or a prefix when it ends with "/"
    access: Access
    max_body: int
    json_body: bool = True  # a body must be application/json (415 otherwise)
    check_json: bool = True  # the guard parses it first: duplicate keys, NaN, nesting (400/422)


@dataclass(frozen=True)
class RoutePolicy:
    rules: tuple[RouteRule, ...]
    default: RouteRule

    def rule_for(self, path: str) -> RouteRule:
        """The exact rule for ``path``, else the longest matching prefix rule, else the default."""
        best: RouteRule | None = None
        for rule in self.rules:
            if rule.prefix == path:
                return rule
            if rule.prefix.endswith("/") and path.startswith(rule.prefix) and (
                    best is None or len(rule.prefix) > len(best.prefix)):
                best = rule
        return best or self.default


@dataclass(frozen=True)
class Tokens:
    admin: str | None
    labeller: str | None = None
    alerts: str | None = None

    def check(self, access: Access, given: str) -> bool | None:
        """True: allowed; False: wrong or missing credential; None: no credential is
        configured for this access, so nobody can have it (answered 503)."""
        if access is Access.PUBLIC:
            return True
        own = {Access.LABELLER: self.labeller, Access.ALERTS: self.alerts}
        accepted = [self.admin] if access is Access.ADMIN else [own[access], self.admin]
        configured = [t for t in accepted if t]
        if not configured:
            return None
        return any(matches(given, t) for t in configured)


def settings_tokens() -> Tokens:
    from healmesh.settings import get_settings

    s = get_settings()
    return Tokens(admin=s.admin_token, labeller=s.labeller_token, alerts=s.alerts_token)


# the settings that configure each credential (named when none is configured)
TOKEN_SETTINGS = {Access.ADMIN: "HEALMESH_ADMIN_TOKEN", Access.LABELLER: "HEALMESH_LABELLER_TOKEN",
                  Access.ALERTS: "HEALMESH_ALERTS_TOKEN"}


def requires(access: Access) -> Callable[..., None]:
    """The same decision as a FastAPI dependency: a second line behind the guard, so that an
    app mounted without it is not open."""
    from fastapi import Header, HTTPException

    def dependency(authorization: str | None = Header(default=None)) -> None:
        verdict = settings_tokens().check(access, bearer(authorization))
        if verdict is None:
            raise HTTPException(503, f"{access.value} API disabled: no {access.value} token is configured")
        if not verdict:
            raise HTTPException(401, f"missing or wrong {access.value} token", headers={"WWW-Authenticate": "Bearer"})

    return dependency


# --- JSON bodies ---------------------------------------------------------------------------------

class RequestRejected(HealmeshError):
    """A request refused with ``status``; ``detail`` lists fields at fault (for 422)."""

    def __init__(self, status: int, error: str, detail: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers or {}

    def body(self) -> bytes:
        out: dict[str, Any] = {"error": self.error}
        if self.detail is not None:
            out["detail"] = self.detail
        return json.dumps(out).encode()


class DuplicateKey(InvalidData):
    """A JSON object with a key twice (which one would win is up to each parser)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise DuplicateKey(k)
            seen.add(k)
    return out


def _no_constant(name: str) -> Any:
    raise InvalidData(f"{name} is not a JSON number")


def loads_strict(raw: bytes) -> Any:
    """JSON as RFC 8259 means it: no duplicate keys (which one would win is up to each parser),
    no NaN or Infinity, and nesting too deep for the parser is a 400, not a crash."""
    try:
        return json.loads(raw, object_pairs_hook=_unique, parse_constant=_no_constant)
    except DuplicateKey as exc:
        raise RequestRejected(422, "duplicate key in the JSON body", [
            {"field": exc.key, "loc": ["body", exc.key], "msg": f"the key {exc.key!r} appears more than once",
             "type": "duplicate_key"}]) from None
    except RecursionError:
        raise RequestRejected(400, "malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestRejected(400, f"malformed JSON: {exc}") from None


# --- the middleware ----------------------------------------------------------------------------

def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def is_json(content_type: bytes | None) -> bool:
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


@dataclass
class AccessGuard:
    """ASGI middleware applying a ``RoutePolicy``; ``tokens`` is read per request (settings)."""

    app: ASGIApp
    policy: RoutePolicy
    tokens: Callable[[], Tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            receive = await self._admit(scope, receive)
        except RequestRejected as exc:
            await _answer(send, exc)
            return
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive) -> Receive:
        rule = self.policy.rule_for(scope["path"])
        headers = scope.get("headers") or ()
        if rule.access is not Access.PUBLIC:
            given = bearer((_header(headers, b"authorization") or b"").decode("latin-1"))
            verdict = self.tokens().check(rule.access, given)
            if verdict is None:
                names = " / ".join(sorted({TOKEN_SETTINGS[rule.access], TOKEN_SETTINGS[Access.ADMIN]}))
                raise RequestRejected(503, f"{rule.access.value} API disabled: no {rule.access.value} token is "
                                        f"configured ({names})")
            if not verdict:
                raise RequestRejected(401, f"missing or wrong {rule.access.value} token",
                                   headers={"www-authenticate": "Bearer"})
        declared = _header(headers, b"content-length")
        length = int(declared) if declared is not None and declared.isdigit() else None
        if length is not None and length > rule.max_body:
            raise RequestRejected(413, f"the body is larger than {rule.max_body} bytes")
        chunked = b"chunked" in (_header(headers, b"transfer-encoding") or b"").lower()
        has_body = bool(length) or chunked
        if not has_body:
            return receive
        if rule.json_body and scope["method"] in BODY_METHODS and not is_json(_header(headers, b"content-type")):
            raise RequestRejected(415, "the body must be JSON (content-type: application/json)")
        if not (chunked or (rule.check_json and scope["method"] in BODY_METHODS)):
            return receive  # its length is known and within the limit: the route reads it
        raw = await _read_limited(receive, rule.max_body)
        if rule.check_json and rule.json_body:
            loads_strict(raw)
        return _replay(raw)


async def _read_limited(receive: Receive, limit: int) -> bytes:
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestRejected(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestRejected(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


def _replay(raw: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _answer(send: Send, exc: RequestRejected) -> None:
    payload = exc.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
               (b"connection", b"close")]  # an unread body may follow: do not reuse the connection
    headers += [(k.encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# --- the policies ------------------------------------------------------------------------------

KB = 1024
PUBLIC_GET = 64 * KB  # routes that take no body: a small limit, not none (a GET may carry one)
ADMIN_BODY = 64 * KB
# Alertmanager's webhook: at most `max_alerts` (healmesh.ops.alerting) alerts of a few hundred bytes
ALERTS_BODY = 256 * KB


def gateway_policy(max_predict_bytes: int) -> RoutePolicy:
    """The gateway's routes (full paths as the server sees them)."""
    return RoutePolicy(rules=(
        # the fast path parses the body itself, with loads_strict: one parse per request
        RouteRule("/api/v1/predict", Access.PUBLIC, max_predict_bytes, check_json=False),
        # BentoML's typed predict API (the same prediction); its pydantic parser lets a duplicate key's
        # last value win, so the strict parse here refuses what the fast path refuses
        RouteRule("/predict", Access.PUBLIC, max_predict_bytes),
        RouteRule("/api/v1/feedback", Access.LABELLER, 4 * KB),
        RouteRule("/api/v1/feedback/batch", Access.LABELLER, 512 * KB),  # 1,000 labels of ~80 bytes
        RouteRule("/api/v1/alerts", Access.ALERTS, ALERTS_BODY),
        RouteRule("/api/v1/admin", Access.ADMIN, ADMIN_BODY),
        RouteRule("/api/v1/admin/", Access.ADMIN, ADMIN_BODY),
    ), default=RouteRule("/", Access.PUBLIC, PUBLIC_GET))


def scorer_policy(max_predict_bytes: int) -> RoutePolicy:
    """A scorer's routes: predict is public (it changes nothing and logs nothing; in a cluster
    only the gateway reaches it), ``/admin`` needs the admin token."""
    return RoutePolicy(rules=(
        # BentoML validates the body against the typed API; a second parse here would cost the
        # hot path, and the gateway is the scorers' caller
        RouteRule("/predict", Access.PUBLIC, max_predict_bytes, check_json=False),
        RouteRule("/predict_canary", Access.PUBLIC, max_predict_bytes, check_json=False),
        RouteRule("/admin", Access.ADMIN, ADMIN_BODY),
        RouteRule("/admin/", Access.ADMIN, ADMIN_BODY),
    ), default=RouteRule("/", Access.PUBLIC, PUBLIC_GET))
