"""The ASGI layers around the FastAPI app, and the request metrics they keep.

:func:`xmodal.service.app.create_app` wraps the app in, from innermost to outermost:
:class:`HeadAndSlash` (HEAD as GET, a trailing slash as none), :class:`BodyLimit` (413 for a
body over the upload or JSON limit), :class:`RateLimit` (429 past ``--rate-limit``, when set),
:class:`RefuseWrites` (403 for a write to a read-only collection, before the rate limit),
:class:`Observe` (counts and times each request into :class:`Metrics`, which /metrics renders
for Prometheus) and :class:`SecurityHeaders` (nosniff, no-referrer, the page's CSP). Each is
plain ASGI: no extra task or thread per request. :class:`FiniteJSONResponse` is the app's
default response class (a NaN or infinite float is sent as null).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict, defaultdict
from typing import Any

from fastapi.responses import JSONResponse

from ..index.collection import Collection

# the web page: its own script and style only; thumbnails may be blob: URLs (a private
# collection's, fetched with the key header) or an older routing server's shard URLs
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: http: https:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``limit`` bytes (declared or streamed); bodies
    other than multipart uploads (JSON) over ``json_limit``."""

    def __init__(self, app: Any, limit: int, json_limit: int | None = None) -> None:
        self.app, self.upload_limit = app, limit
        self.json_limit = limit if json_limit is None else min(limit, json_limit)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/form-data")
        limit = self.upload_limit if multipart else self.json_limit
        if b"content-length" in headers:
            try:
                declared = int(headers[b"content-length"])
            except ValueError:
                declared = -1
            if declared < 0 or declared > limit:
                return await _plain(send, 413, f"request body over {_size(limit)}")
        seen, over, started = 0, False, False

        async def limited() -> dict:
            nonlocal seen, over
            if over:
                raise _TooLarge()
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    over = True
                    raise _TooLarge()
            return msg

        async def sending(msg: dict) -> None:
            nonlocal started
            if over:  # FastAPI's body parser catches _TooLarge and answers 400: the 413 is sent below
                return
            started = True
            await send(msg)

        try:
            await self.app(scope, limited, sending)
        except Exception:
            if not over:  # whatever the app made of the cut-off body, it was too large
                raise
        if over and not started:
            await _plain(send, 413, f"request body over {_size(limit)}")


class FiniteJSONResponse(JSONResponse):
    """JSON with every NaN / infinite float sent as null, as pydantic's serialiser sent it
    while the routes' answers went through one: JSON has no NaN, and Starlette's
    ``allow_nan=False`` turned such an answer into a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except ValueError:
            return super().render(_nan_to_null(content))


def _nan_to_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_nan_to_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    return value


class HeadAndSlash:
    """ASGI middleware: HEAD is answered as GET without its body (load balancers and link
    checkers send HEAD; FastAPI routes take GET only), and a trailing slash names the same
    route (``/api/search/``): Starlette's answer to it is a 307 to an absolute ``http://``
    URL, which httpx does not follow by default and which names the wrong scheme behind a TLS
    proxy. The app sees a copy of the scope (the server reads the method from its own to know
    a HEAD answer has no body); the route found is copied back for the metrics."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, head = scope.get("path", ""), scope.get("method") == "HEAD"
        slash = len(path) > 1 and path.endswith("/") and not path.startswith("/static/")
        if not (slash or head):
            return await self.app(scope, receive, send)
        inner = dict(scope)
        if slash:
            inner["path"] = path.rstrip("/") or "/"
            if isinstance(scope.get("raw_path"), bytes):
                inner["raw_path"] = scope["raw_path"].rstrip(b"/") or b"/"
        sending = send
        if head:
            inner["method"] = "GET"

            async def sending(msg: dict) -> None:
                if msg["type"] == "http.response.body" and msg.get("body"):
                    msg = {**msg, "body": b""}
                await send(msg)

        try:
            await self.app(inner, receive, sending)
        finally:
            if "route" in inner:
                scope["route"] = inner["route"]


class SecurityHeaders:
    """ASGI middleware: ``nosniff`` and ``no-referrer`` on every answer (a thumbnail's or a
    link's URL never reaches another site); the web page also gets its CSP and may not be
    framed (the add form could be clickjacked)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        page = scope.get("path") == "/"

        async def sending(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
                if page:
                    extra += [(b"content-security-policy", PAGE_CSP.encode()), (b"x-frame-options", b"DENY")]
                have = {k.lower() for k, _ in msg.get("headers", [])}
                msg = {**msg, "headers": [*msg.get("headers", []), *(h for h in extra if h[0] not in have)]}
            await send(msg)

        await self.app(scope, receive, sending)


class RateLimit:
    """ASGI middleware: at most ``per_minute`` API requests per client address, as a token
    bucket (a burst of ``per_minute``, then one more every ``60 / per_minute`` seconds); over
    it, 429 with ``Retry-After``. Only /api/ routes count: not /health and /metrics (load
    balancers, monitoring), the page and its files, nor thumbnails (a results page loads up to
    k of them). Behind a reverse proxy every client
    has the proxy's address: limit there instead. ``clock`` is injectable for tests."""

    MAX_CLIENTS = 10000  # past this many tracked addresses, full buckets are forgotten

    def __init__(self, app: Any, per_minute: int, clock: Any = time.monotonic) -> None:
        self.app, self.capacity, self.clock = app, float(per_minute), clock
        self.rate = per_minute / 60.0
        # address -> (tokens, at), the least recently seen first
        self.buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def counted(path: str) -> bool:
        return path.startswith("/api/") and not path.endswith("/thumbnail")

    def take(self, who: str) -> float:
        """0 if ``who`` may go on (one token taken), else the seconds until it may."""
        now = self.clock()
        with self.lock:
            tokens, at = self.buckets.pop(who, (self.capacity, now))  # back in last: seen now
            tokens = min(self.capacity, tokens + (now - at) * self.rate)
            took = tokens >= 1
            self.buckets[who] = (tokens - 1 if took else tokens, now)
            if len(self.buckets) > self.MAX_CLIENTS:
                self.forget(now)
            return 0.0 if took else (1 - tokens) / self.rate

    def forget(self, now: float) -> None:
        """Drop full buckets (what an unknown address gets anyway) from the least recently
        seen end, up to the first that is not full: a few steps a request, not a scan of every
        address under the lock (1 ms a request past MAX_CLIENTS). A bucket fills within a
        minute, so every address not seen for a minute goes."""
        while self.buckets:
            who, (tokens, at) = next(iter(self.buckets.items()))
            if tokens + (now - at) * self.rate < self.capacity:
                break
            del self.buckets[who]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.counted(scope.get("path", "")):
            client = scope.get("client")
            wait = self.take(client[0] if client else "?")
            if wait > 0:
                retry = str(max(1, math.ceil(wait - 1e-9)))
                body = json.dumps({"detail": f"rate limit: {self.capacity:g} requests a minute per "
                                             f"client; retry after {retry} s"}).encode()
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode()),
                                        (b"retry-after", retry.encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class RefuseWrites:
    """ASGI middleware, outside :class:`RateLimit` and :class:`BodyLimit`: while ``refusal()``
    gives a reason (the collection is read-only), a request for one of ``write_routes()`` (the
    app's routes that write) answers 403 with it at once. A write that can never succeed
    takes nothing from the client's --rate-limit budget, and its body is not read (an upload
    over the limit is told it is a 403, not a 413). Routes are matched as the router matches
    them, a trailing slash as none (:class:`HeadAndSlash`); the route's own check of the
    same refusal stays for anything not matched here."""

    def __init__(self, app: Any, refusal: Any, write_routes: Any) -> None:
        self.app, self.refusal, self.write_routes = app, refusal, write_routes
        self._routes: list | None = None  # the app's routes are all there by the first request

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("method") not in ("GET", "HEAD"):
            why = self.refusal()
            if why is not None:
                from starlette.routing import Match

                if self._routes is None:
                    self._routes = list(self.write_routes())
                path = scope.get("path", "")
                probe = {**scope, "path": path.rstrip("/") or "/"} if path.endswith("/") else scope
                if any(r.matches(probe)[0] is Match.FULL for r in self._routes):
                    body = json.dumps({"detail": why}).encode()
                    await send({"type": "http.response.start", "status": 403,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


class Observe:
    """ASGI middleware: count requests and time them per route (no extra task or thread)."""

    def __init__(self, app: Any, metrics: "Metrics") -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500

        async def sending(msg: dict) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "other")
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - t0)


class _TooLarge(Exception):
    pass


def _size(n: int) -> str:
    """A limit as people set it: 20971520 -> "20 MiB" (a limit not in whole MiB: its bytes)."""
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n} bytes"


async def _plain(send: Any, status: int, detail: str) -> None:
    body = ('{"detail": "%s"}' % detail).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class Metrics:
    """Prometheus counters and a latency histogram per route (text exposition format)."""

    BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.hist: dict[str, list[int]] = defaultdict(lambda: [0] * (len(self.BUCKETS) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self.lock:
            self.requests[(method, route, status)] += 1
            h = self.hist[route]
            for i, b in enumerate(self.BUCKETS):
                if seconds <= b:
                    h[i] += 1
            h[-1] += 1
            self.sums[route] += seconds

    def render(self, coll: Collection) -> str:
        out = ["# HELP xmodal_requests_total HTTP requests by method, route and status.",
               "# TYPE xmodal_requests_total counter"]
        with self.lock:
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f'xmodal_requests_total{{method="{m}",route="{r}",status="{s}"}} {n}')
            out += ["# HELP xmodal_request_seconds HTTP request latency by route.",
                    "# TYPE xmodal_request_seconds histogram"]
            for r, h in sorted(self.hist.items()):
                for b, n in zip(self.BUCKETS, h):
                    out.append(f'xmodal_request_seconds_bucket{{route="{r}",le="{b}"}} {n}')
                out.append(f'xmodal_request_seconds_bucket{{route="{r}",le="+Inf"}} {h[-1]}')
                out.append(f'xmodal_request_seconds_sum{{route="{r}"}} {self.sums[r]:.6f}')
                out.append(f'xmodal_request_seconds_count{{route="{r}"}} {h[-1]}')
        out += ["# HELP xmodal_items Items in the collection by modality.", "# TYPE xmodal_items gauge"]
        for m in ("image", "text"):
            out.append(f'xmodal_items{{modality="{m}"}} {coll.count(m)}')
        out += ["# HELP xmodal_generation Write generation of the collection.", "# TYPE xmodal_generation gauge",
                f"xmodal_generation {coll.store.generation()}"]
        return "\n".join(out) + "\n"
