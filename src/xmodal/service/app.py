"""The HTTP API and web page over one collection (FastAPI; OpenAPI schema at /openapi.json).

Read routes (search, items, thumbnails) are open when the collection's ``public_read`` setting
is on, else they need a key with role ``read``; adding and deleting need ``write``; keys,
settings and the audit log need ``admin``. Send keys as ``X-API-Key: TOKEN`` or
``Authorization: Bearer TOKEN``, never in the URL (``?api_key=`` is refused: URLs end up in
access logs, proxy logs, browser history and Referer headers); the web page fetches a private
collection's thumbnails with the header and shows them as ``blob:`` URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import os
import re
import secrets
import tempfile
import threading
import time
import warnings
import weakref
from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from ..data.dataset import DataError
from .._fs import atomic_write_bytes
from ..index.collection import (DB_NAME, THUMB_SIZES, Collection, Hit, ImageItem, ReadOnlyError, TextItem,
                                THUMB_SUFFIXES, check_key, encode_items, read_only_error, thumb_file)
from ..index.shards import (RemoteShard, ShardedCollection, ShardHTTPError, UnknownLabelError,
                            check_labels as check_known_labels, shard_keys)
from ..index.store import CollectionError
from . import auth

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# any body but a multipart upload: the largest search (256 texts of 2000 characters, each
# \uXXXX-escaped as JSON clients do by default) is ~3 MB; parsing 20 MB of "0," would build
# a list of ten million numbers before its length is checked
MAX_JSON_BYTES = 4 * 1024 * 1024
# the web page: its own script and style only; thumbnails may be blob: URLs (a private
# collection's, fetched with the key header) or an older routing server's shard URLs
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: http: https:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
# how a routing server is given the key it sends to its shards (named when one answers 401/403)
SHARD_KEY_HINT = ("--shard-api-key or $XMODAL_SHARD_API_KEY (URL=KEY for this shard alone; "
                  "shard_api_key= in create_app)")
MAX_IMAGE_PIXELS = 40_000_000  # ~ a 6300x6300 image; larger is refused before decoding
# uploads read, decoded (checked) and encoded at once: each may take ~120 MB of pixels
MAX_CONCURRENT_UPLOADS = 4
_SAFE_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._#@+=-]*(/[A-Za-z0-9][A-Za-z0-9._#@+=-]*)*$")
ADD_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "stored: a new item, a changed one replaced (new ids in `ids`), or the same "
                         "item sent with other labels (relabelled in place, its id kept)"},
    200: {"description": "unchanged: the same item, with the same labels, was already stored (sent "
                         "again); nothing written, "
                         "`id` and `item` are the existing item"},
}
JPEG_CONTENT = {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}
# listed in the schema; a size outside it answers 422 naming the sizes
THUMB_QUERY = Query(256, description="the thumbnail's longer side in pixels",
                    json_schema_extra={"enum": list(THUMB_SIZES)})
MAX_PROXIED_THUMBNAIL = 4 * 1024 * 1024  # a shard's 512 px JPEG is far smaller
# MPO: the multi-picture JPEG many phones write (its first picture is a plain JPEG)
_FORMAT_EXT = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif",
               "WEBP": ".webp", "AVIF": ".avif"}
# a JPEG is checked as decoded at up to 1/8 scale, as the encoders read it
_JPEG_SCALE = 8


# ------------------------------------------------------------------------- models
def _utf8(s: str) -> str:
    # JSON's "\ud800" escape is valid JSON and pydantic lets it through inside lists and
    # optional fields; no encoder, hash or SQLite statement can take it (a 500 each time)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not valid Unicode: a lone surrogate at character {exc.start}") from None
    return s


Utf8Str = Annotated[str, AfterValidator(_utf8)]
# a search filter, trimmed as stored labels are (check_labels): "harbour, quay" is two labels
LabelStr = Annotated[str, AfterValidator(_utf8), AfterValidator(str.strip)]


# NaN / Infinity are valid to Python's json and to pydantic's float: refused by field here,
# not as "vectors hold NaN or inf" deep in the search
Finite = Annotated[float, Field(allow_inf_nan=False)]


def _no_blanks(labels: list[str]) -> list[str]:
    return [lab for lab in labels if lab]


# a JSON list of filters: blanks dropped, as between two commas of a query string
LabelList = Annotated[list[LabelStr], AfterValidator(_no_blanks)]


def search_target(req: Any, query_modality: str | None, same: bool = False) -> str | None:
    """The modality a search answers: the request's ``target``, else an item query's own
    (``same``: more like this, as in the CLI), else the other one than the query's (image for
    a vector). None only for an item query whose item is unknown."""
    if req.target:
        return req.target
    if same:
        return query_modality
    return {"text": "image", "image": "text"}.get(query_modality or "", "image")


def split_labels(labels: str) -> list[str]:
    """A comma-separated filter from a query string or form: trimmed, blanks dropped (as a
    JSON list of them, :data:`LabelList`)."""
    return _no_blanks([x.strip() for x in labels.split(",")])


class SearchRequest(BaseModel):
    # the length inside the Annotated, before the validator: pydantic says "at most 2000
    # characters" (a limit on the optional field counts "items")
    text: Annotated[str, Field(max_length=2000), AfterValidator(_utf8)] | None = Field(
        None, description="text query")
    item_id: int | None = Field(None, description="an item's id: more like this")
    vector: list[Finite] | None = Field(None, description="a common-space vector; for binary "
                                       "collections the packed code bytes (0..255)", max_length=65536)
    target: Literal["image", "text"] | None = Field(None, description="modality of results "
                                                    "(default: the other modality)")
    k: int = Field(10, ge=1, le=1000)
    labels: LabelList = Field(default_factory=list, description="only items with any of these labels")
    exact: bool = Field(False, description="search the flat exact index")
    distinct: bool = Field(False, description="collapse identical texts into one result")
    relevant: list[int] = Field(default_factory=list, description="ids marked relevant (Rocchio)")
    nonrelevant: list[int] = Field(default_factory=list, description="ids marked not relevant")
    alpha: Finite = 1.0
    beta: Finite = 0.75
    gamma: Finite = 0.25
    space: Utf8Str | None = Field(None, description="the common-space fingerprint the caller encoded "
                              "`vector` in (a routing server's check); another space answers 409")
    check_labels: bool = Field(True, description="a label no item of the searched modality has answers "
                               "422 (a routing server sends false: the label may be on another of its "
                               "shards)")
    fvector: list[Finite] | None = Field(None, description="with a binary `vector`: the query's float "
                                         "projection, to re-rank by cosine (collections indexed with "
                                         "--rerank; a routing server sends it)", max_length=65536)
    local_only: bool = Field(False, description="search this server's own collection only, not the "
                             "shards it routes to (a routing server sends true to its shards)")


class BatchSearchRequest(BaseModel):
    texts: list[Utf8Str] = Field(..., min_length=1, max_length=256, description="text queries, "
                             "encoded in one batch (each 1-2000 characters)")
    target: Literal["image", "text"] | None = Field(None, description="modality of results (default image)")
    k: int = Field(10, ge=1, le=1000)
    labels: LabelList = Field(default_factory=list, description="only items with any of these labels")
    exact: bool = Field(False, description="search the flat exact index")
    distinct: bool = Field(False, description="collapse identical texts into one result")


MAX_TEXT = 10000  # characters in a stored text (an added text, an upload's caption)


class TextAdd(BaseModel):
    text: Utf8Str = Field(..., min_length=1, max_length=MAX_TEXT)
    key: Utf8Str | None = None
    pair_id: int | None = None
    labels: list[Utf8Str] = Field(default_factory=list)


class KeyCreate(BaseModel):
    role: Literal["read", "write", "admin"]
    name: Utf8Str = Field("", max_length=200)


class Settings(BaseModel):
    public_read: bool


# ------------------------------------------------------------------------- answers
# The JSON the routes send, for the OpenAPI schema (generated clients, /docs). Routes still
# return plain dicts, so an answer is never filtered or re-validated on the way out;
# tests/test_service_api.py checks that real answers fit these models field by field.
class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(..., description="where: ['body', 'k'], ['query', 'limit'], ...")
    msg: str
    type: str
    input: Any = Field(None, description="the value sent (left out when over 200 characters or items)")
    ctx: dict[str, Any] | None = None


class ErrorBody(BaseModel):
    """Every error's body: a message naming the field (``q: blank (only whitespace)``), or
    FastAPI's list of issues for a request that does not fit the route's parameters."""
    detail: str | list[ValidationIssue]


class ItemAnswer(BaseModel):
    id: int = Field(..., description="the item's id in this collection (a remote hit's: on its shard)")
    modality: Literal["image", "text"]
    key: str = Field(..., description="the item's key: a path relative to the indexed folder, or one given")
    path: str | None = Field(..., description="an image's file on the server (null for texts)")
    text: str | None = Field(..., description="a text item's text (null for images)")
    labels: list[str]
    pair_id: int | None = Field(..., description="a caption's image (null when it has none)")
    thumbnail: str | None = Field(..., description="the image's thumbnail URL (a caption's: its image's); "
                                  "a remote shard's on that shard's server")
    caption: str | None = Field(..., description="a text's text; an image's first caption")
    shard: str | None = Field(None, description="routing servers only: the shard a remote hit is from")
    proxy_thumbnail: str | None = Field(None, description="routing servers only: a remote hit's thumbnail "
                                        "through this server")


class HitAnswer(ItemAnswer):
    score: float = Field(..., description="cosine similarity; for binary codes 1 - 2*hamming/bits")


class ListedItem(ItemAnswer):
    score: None = Field(None, description="always null in a listing (kept for older clients)")


class FailedShard(BaseModel):
    shard: str
    error: str


class SearchAnswer(BaseModel):
    target: Literal["image", "text"] = Field(..., description="the modality searched")
    k: int
    results: list[HitAnswer] = Field(..., description="best first; fewer than k when fewer items match")
    failed_shards: list[FailedShard] = Field(None, description="routing servers only: shards left out")


class BatchQueryAnswer(SearchAnswer):
    query: str


class BatchSearchAnswer(BaseModel):
    queries: list[BatchQueryAnswer] = Field(..., description="one per text, in the order sent")


class ItemsPage(BaseModel):
    items: list[ListedItem] = Field(..., description="in id order")
    offset: int
    limit: int
    total: int = Field(..., description="items of that modality (or all) in the collection")


class AddAnswer(BaseModel):
    ids: list[int] = Field(..., description="ids of the items stored by this request")
    added: int
    replaced: int = Field(None, description="image uploads only: a changed item replaced")
    unchanged: int
    id: int | None = Field(..., description="the item's id (the image's, for an upload)")
    item: ItemAnswer | None


class DeleteAnswer(BaseModel):
    deleted: list[int] = Field(..., description="ids deleted: the item and, for an image, its captions")


class HealthAnswer(BaseModel):
    status: Literal["ok"]
    items: int = Field(None, description="only to callers who may read")
    generation: int = Field(None, description="the write generation; only to callers who may read")


class InfoAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    images: int
    texts: int
    output: Literal["real", "binary"]
    dim: int
    index: str
    space: str = Field(..., description="the common space's fingerprint: shards of one space share it")
    rerank: bool
    method: str | None
    encoders: dict[str, str | None]
    generation: int
    public_read: bool
    read_only: bool
    db_id: str | None
    labels: list[str]
    labels_by_target: dict[str, list[str]]
    shards: list[str] = Field(None, description="routing servers only: the shard URLs")


class KeyRecord(BaseModel):
    key_id: str
    name: str
    role: Literal["read", "write", "admin"]
    created: float = Field(..., description="Unix time")
    revoked: bool
    revoked_at: float | None


class KeyList(BaseModel):
    keys: list[KeyRecord]


class KeyMade(BaseModel):
    token: str = Field(..., description="the key, shown this once: xmk_<key_id>_<secret>")
    key_id: str
    role: Literal["read", "write", "admin"]
    name: str


class KeyRevoked(BaseModel):
    key_id: str
    revoked: str = Field(..., description="the key id again (older clients read it here)")


class AuditEntry(BaseModel):
    id: int
    ts: float = Field(..., description="Unix time")
    actor: str = Field(..., description="key:<key_id>, or local for the command line")
    action: str
    detail: dict[str, Any] | str
    remote: str | None = Field(..., description="the client's address")


class AuditPage(BaseModel):
    entries: list[AuditEntry] = Field(..., description="newest first")
    offset: int
    limit: int
    total: int


ERRORS = {
    400: "the request cannot be used: an empty or broken upload, a bad item key",
    401: "no API key where the route needs one (reading too when public_read is off), an invalid "
         "or revoked key, or a key in the URL (?api_key=)",
    403: "the key's role is too low for the route",
    404: "no such item (or key, or shard)",
    409: "`space` is not this collection's common space",
    413: "request body over --max-upload-mb (uploads) or 4 MiB (JSON); an image over 40 Mpx",
    415: "the upload is not an image in an accepted format",
    422: "a request that does not fit the route: FastAPI's list of issues (loc names the field), or "
         "a message naming the field",
    429: "over --rate-limit: Retry-After says when to try again",
    502: "the shard did not answer as it should",
}
WRITE_403 = ERRORS[403] + "; or the collection is read-only (served with --read-only, or its folder " \
    "is not writable)"


def errors(*codes: int, write: bool = False, rate: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the error codes a route answers (plus 401 and 403: every
    route with a role), each with the shared :class:`ErrorBody`."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({401, 403, *codes, *((429,) if rate else ())}):
        text = WRITE_403 if code == 403 and write else ERRORS[code]
        out[code] = {"model": ErrorBody, "description": text}
    return out


def answers(model: type[BaseModel], *codes: int, description: str = "the answer", status: int = 200,
            write: bool = False, rate: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: the success answer's model and the errors (:func:`errors`)."""
    return {status: {"model": model, "description": description}, **errors(*codes, write=write, rate=rate)}


def add_answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    """An add's two success answers (:data:`ADD_RESPONSES`) and its errors."""
    return {**{s: {**r, "model": AddAnswer} for s, r in ADD_RESPONSES.items()}, **errors(*codes, write=True)}


# ------------------------------------------------------------------------- helpers
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


def check_image_bytes(data: bytes, name: str = "upload", max_pixels: int = MAX_IMAGE_PIXELS) -> str:
    """Validate an uploaded image without trusting it; returns its Pillow format name.
    Empty, non-image, truncated and oversized (decompression bomb) uploads are refused."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise HTTPException(400, f"{name}: empty upload (0 bytes)")
    try:
        with warnings.catch_warnings():  # the pixel limit below is the guard; no warning spam
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            w, h = im.size  # read from the header: nothing decoded yet
            fmt = im.format
            from ..encoders.images import jpeg_decodes_small

            if fmt in ("JPEG", "MPO") and w * h > max_pixels and jpeg_decodes_small(im.fp):
                # a large phone photo: decoded (and so checked) at reduced scale, as encoded;
                # a progressive one needs memory for its full size, so it is judged by that
                im.draft("RGB", (max(1, w // _JPEG_SCALE), max(1, h // _JPEG_SCALE)))
            if im.size[0] * im.size[1] > max_pixels:
                raise HTTPException(413, f"{name}: image is {w}x{h} = {w * h} pixels, over the "
                                         f"limit of {max_pixels} (decompression bomb guard)")
            if fmt not in _FORMAT_EXT:
                raise HTTPException(415, f"{name}: image format {fmt} is not accepted; "
                                         f"use one of {sorted(_FORMAT_EXT)}")
            im.load()
    except HTTPException:
        raise
    except Image.DecompressionBombError as exc:
        raise HTTPException(413, f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise HTTPException(415, f"{name}: not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise HTTPException(400, f"{name}: broken image ({exc})") from None
    return fmt


MAX_LABEL = 200


def check_labels(labels: Sequence[str], field: str, skip_blank: bool = False) -> list[str]:
    """Labels from a client, trimmed: none blank (``skip_blank``: blanks dropped, as between
    two commas of a form field), none with a comma (search filters are comma-separated, so
    such a label could never be searched for), none over 200 characters. An error names the
    label by its place in the list as sent."""
    out = []
    for i, lab in enumerate(labels):
        lab = lab.strip()
        if not lab and skip_blank:
            continue
        if not lab:
            raise HTTPException(422, f"{field}[{i}]: blank label")
        if "," in lab:
            raise HTTPException(422, f"{field}[{i}]: {lab!r} holds a comma; search filters split on commas")
        if len(lab) > MAX_LABEL:
            raise HTTPException(422, f"{field}[{i}]: label over {MAX_LABEL} characters")
        out.append(lab)
    return out


def safe_key(key: str) -> str:
    """Client-chosen item keys: relative, no '..', no odd characters."""
    try:
        check_key(key)
    except DataError as exc:
        raise HTTPException(400, str(exc)) from None
    if not _SAFE_KEY.match(key) or any(part in ("..", ".") for part in key.split("/")):
        raise HTTPException(400, f"item key {key!r}: use letters, digits, '._#@+=-' and '/'-separated "
                                 "parts; no '..', no leading '/'")
    return key


# ------------------------------------------------------------------------- app
STAGED_UPLOAD_TTL = 3600.0  # seconds: an older staged upload is a killed server's leftover


def sweep_staged_uploads(folder: Path, older_than: float = STAGED_UPLOAD_TTL) -> int:
    """Remove ``files/.upload-*`` copies older than ``older_than`` seconds, left by a server
    killed between staging an upload and its clean-up (never referenced by any item). Younger
    ones may belong to an upload in flight in another process, so they stay. Returns how many
    went."""
    cutoff = time.time() - older_than
    gone = 0
    for f in folder.glob(".upload-*"):
        try:
            if f.is_file() and f.stat().st_mtime < cutoff:
                f.unlink()
                gone += 1
        except FileNotFoundError:  # another server swept it first
            pass
    return gone


def create_app(collection: str | Path | Collection, *, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               max_image_pixels: int = MAX_IMAGE_PIXELS, shards: Sequence[str | RemoteShard] = (),
               shard_api_key: str | Sequence[str] | Mapping[str, str] | None = None,
               shard_timeout: float = 30.0, max_json_bytes: int = MAX_JSON_BYTES,
               rate_limit: int | None = None, clock: Any = time.monotonic,
               max_concurrent_uploads: int = MAX_CONCURRENT_UPLOADS) -> FastAPI:
    """The HTTP API and web page over ``collection``. ``shards``: URLs of other ``xmodal serve``
    instances of the same common space; searches then cover them too (merged by score, each
    remote hit tagged with its ``shard`` URL, a shard that fails left out and named in the
    answer's ``failed_shards``; so is one that takes over ``shard_timeout`` seconds).
    ``shard_api_key``: one key for every shard, or ``URL=KEY`` strings (or ``{url: key}``), one
    per private shard (:func:`xmodal.index.shards.shard_keys`). Items,
    uploads and keys stay this collection's own. ``max_json_bytes``: the limit of a body that
    is not a multipart upload (413 over it). ``rate_limit``: API requests a minute per client
    address (:class:`RateLimit`; None: no limit); ``clock`` is its time source.
    ``max_concurrent_uploads``: image uploads (adds and image searches) read, decoded and
    encoded at once; more wait their turn."""
    if isinstance(max_concurrent_uploads, bool) or not isinstance(max_concurrent_uploads, int) \
            or max_concurrent_uploads < 1:
        raise ValueError(f"max_concurrent_uploads must be a positive whole number, got {max_concurrent_uploads!r}")
    if rate_limit is not None and (isinstance(rate_limit, bool) or not isinstance(rate_limit, int)
                                   or rate_limit < 1):
        raise ValueError(f"rate_limit must be a positive whole number of requests a minute, got {rate_limit!r}")
    coll = collection if isinstance(collection, Collection) else Collection.open(collection)
    if not coll.read_only and (coll.path / "files").is_dir():
        sweep_staged_uploads(coll.path / "files")
    try:
        # one key for every shard, or URL=KEY per private shard (a key is one collection's)
        urls = [s for s in shards if not isinstance(s, RemoteShard)]
        keys = dict(zip(urls, shard_keys(urls, shard_api_key, "shard_api_key")))
        remotes = [s if isinstance(s, RemoteShard) else
                   RemoteShard(s, api_key=keys[s], timeout=shard_timeout, key_hint=SHARD_KEY_HINT)
                   for s in shards]
        # checked now: a shard of another space (or down) stops the start, not a later search
        sharded = ShardedCollection([coll, *remotes], names=["", *[r.url for r in remotes]]) if remotes else None
    except BaseException:
        if coll is not collection:  # opened here: not left open by a start that failed
            coll.close()
        raise
    metrics = Metrics()
    encode_lock = threading.Lock()  # one query through the encoders at a time
    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        if sharded is not None:  # its worker pools: a stopped server leaves no threads behind
            sharded.close()

    app = FastAPI(title="xmodal search", version="1", lifespan=lifespan,
                  default_response_class=FiniteJSONResponse,
                  description="Cross-modal (image <-> text) search over one xmodal collection.")
    app.state.shards = sharded  # the ShardedCollection a routing server searches (None: no shards)
    app.state.collection = coll

    app.add_middleware(HeadAndSlash)  # innermost: every layer above sees the request as sent
    app.add_middleware(BodyLimit, limit=max_upload_bytes, json_limit=max_json_bytes)
    if rate_limit is not None:  # before the body is read; its 429s still counted by Observe
        app.add_middleware(RateLimit, per_minute=rate_limit, clock=clock)
    app.add_middleware(Observe, metrics=metrics)
    app.add_middleware(SecurityHeaders)  # outermost: on every answer, 413s and 429s included
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # --------------------------------------------------------------- auth
    def principal(request: Request) -> tuple[str | None, str | None]:
        token = request.headers.get("x-api-key")
        authz = request.headers.get("authorization", "")
        if not token and authz.lower().startswith("bearer "):
            token = authz[7:].strip()
        if "api_key" in request.query_params:  # refused even beside a header: fix the client
            raise HTTPException(401, "API keys are not accepted in the URL (?api_key=): URLs end up in "
                                     "access logs, proxy logs and browser history; send the X-API-Key "
                                     "header (or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not token:
            return None, None
        got = auth.verify_key(coll, token)
        if got is None:
            raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
        return got

    def need(role: str):
        async def dep(request: Request) -> str:  # async: SQLite lookups of microseconds, no thread hop
            if role != "read" and request.method not in ("GET", "HEAD") and coll.read_only:
                # a write the collection cannot take is refused as such, whatever the key:
                # checked first, a snapshot made without its keys answered a key with 401
                # (its folder scrubbed from the detail by http_error, as every HTTPException's)
                raise HTTPException(403, str(read_only_error(coll.path, coll.path / DB_NAME)))
            key_id, have = principal(request)
            if role == "read" and have is None and coll.public_read:
                return "anonymous"
            if have is None:
                # the cure, for whoever met a private route first: which header, and where a
                # key comes from (no collection path: client errors name no server folder)
                raise HTTPException(401, f"this route needs an API key with role {role!r}: send it as "
                                         f"the X-API-Key header (or Authorization: Bearer); the "
                                         f"collection's owner makes one with `xmodal keys add -c "
                                         f"COLLECTION --role {role}`",
                                    headers={"WWW-Authenticate": "Bearer"})
            if not auth.allows(have, role):
                raise HTTPException(403, f"key {key_id} has role {have!r}; this route needs {role!r}")
            return f"key:{key_id}"
        return dep

    homes = sorted({str(coll.path), str(coll.path.resolve())}, key=len, reverse=True)

    def scrub(text: str) -> str:
        """``text`` without the collection's place on the server's disk (a client error is
        for a client: it learns nothing of the server's file system)."""
        for home in homes:
            text = text.replace(f"{home}: ", "").replace(home, "the collection")
        return text

    def may_read(request: Request) -> bool:
        """Whether this request could read (public_read, or a valid key): without it, routes
        that must answer anyone (/health) say nothing about the collection."""
        if coll.public_read:
            return True
        try:
            return auth.allows(principal(request)[1], "read")
        except HTTPException:  # a bad key: the same as none here
            return False

    async def require_known(labels: Sequence[str], target: str | None) -> None:
        """A label no item of the search's ``target`` modality has (on any shard) is a typo, or
        on the other modality only: 422 naming it, not an empty answer. ``target`` None (an
        item id this collection lacks: a 404 follows): a label on no item at all."""
        if not labels:
            return
        try:
            if sharded is None:
                check_known_labels(coll, labels, "labels", target=target)
            else:  # may ask remote shards which labels they have
                await run_in_threadpool(sharded.check_labels, labels, "labels (on every shard)", 30, target)
        except UnknownLabelError as exc:
            raise HTTPException(422, str(exc)) from None

    def remote(request: Request) -> str | None:
        return request.client.host if request.client else None

    # --------------------------------------------------------------- results
    def hit_json(hits: list[Hit]) -> list[dict[str, Any]]:
        img_ids = [h.id for h in hits if h.modality == "image" and not h.shard]
        caps: dict[int, str] = {}
        if img_ids:
            marks = ",".join("?" * len(img_ids))
            for pid, text in coll.store.query(f"SELECT pair_id, text FROM items WHERE pair_id IN ({marks}) "
                                              f"ORDER BY id", img_ids):
                caps.setdefault(pid, text)
        shard_index = {r.url: i for i, r in enumerate(remotes)}
        out = []
        for h in hits:
            d = h.to_dict()
            # a listed item's score is NaN (no query): null, as JSON has no NaN (json.dumps
            # with allow_nan=False, FastAPI's, refuses the whole answer)
            d["score"] = round(float(h.score), 6) if math.isfinite(h.score) else None
            thumb_of = h.id if h.modality == "image" else h.pair_id
            base = h.shard or ""  # a remote shard's hit: its own server has the thumbnail
            d["thumbnail"] = f"{base}/api/items/{thumb_of}/thumbnail" if thumb_of else None
            if h.shard and thumb_of and h.shard in shard_index:
                # the same picture through this server: a browser holds this server's key, not
                # the shard's, and may not reach the shard at all
                d["proxy_thumbnail"] = f"/api/shards/{shard_index[h.shard]}/items/{thumb_of}/thumbnail"
            if h.modality == "text":
                d["caption"] = h.text
            else:  # a remote shard's image: the caption its own server answered
                d["caption"] = caps.get(h.id) if not h.shard else getattr(h, "caption", None)
            out.append(d)
        return out

    def run_search(req: SearchRequest, q: np.ndarray | None = None, fq: np.ndarray | None = None,
                   query_modality: str | None = None) -> dict[str, Any]:
        exclude: list[int] = []
        if q is None:
            given = [x for x in (req.text, req.item_id, req.vector) if x not in (None, "")]
            if len(given) != 1:
                raise HTTPException(422, "give exactly one of text, item_id, vector (or upload an image)")
            if req.text:
                raise RuntimeError("text queries are encoded before run_search")
            elif req.item_id is not None:
                item = coll.get_item(req.item_id)
                if item is None:
                    raise HTTPException(404, f"no item with id {req.item_id}")
                q, fq = coll.item_vectors([item.id])
                query_modality, exclude = item.modality, [item.id]
            else:
                v = np.asarray(req.vector, dtype=np.float32)
                if coll.kind == "binary":
                    if ((v < 0) | (v > 255) | (v != np.round(v))).any():
                        raise HTTPException(422, "binary collections take vector as code bytes 0..255")
                    v = v.astype(np.uint8)
                width = coll.dim // 8 if coll.kind == "binary" else coll.dim
                if v.shape != (width,):
                    raise HTTPException(422, f"vector must have {width} values, got {v.shape[0]}")
                q = v
                if req.fvector is not None:  # a binary query's float projection: re-rank by it
                    if not coll.fdim:
                        raise HTTPException(422, "fvector: this collection keeps no float projections to "
                                                 "re-rank by (a binary collection indexed with --rerank does)")
                    if len(req.fvector) != coll.fdim:
                        raise HTTPException(422, f"fvector must have {coll.fdim} values, got {len(req.fvector)}")
                    fq = np.asarray(req.fvector, dtype=np.float32).reshape(1, -1)
        if req.space is not None:
            coll.refresh()  # a rebuild beside the server may have changed the space
            if req.space != coll.space:
                raise HTTPException(409, f"this collection's common space is {coll.space}, not {req.space} "
                                         "as the caller expects (rebuilt, or never a shard of it): its "
                                         "scores would not compare; make it a shard with `xmodal index "
                                         "SOURCE -c THIS --like FIRST`")
        target = search_target(req, query_modality, same=bool(exclude))
        rerank = 4 if fq is not None else 0
        failed: list = []
        try:
            if sharded is None or req.local_only:
                hits = coll.search_vector(q, target, req.k, labels=req.labels or None, exact=req.exact,
                                          relevant=req.relevant, nonrelevant=req.nonrelevant, fq=fq,
                                          rerank=rerank, exclude=exclude,
                                          feedback=(req.alpha, req.beta, req.gamma), distinct=req.distinct,
                                          check_labels=False)  # require_known's 422, or a router's query
            else:  # feedback ids are this collection's: applied here, then every shard searched
                coll.refresh()
                q2 = np.asarray(q).reshape(1, -1)
                q2, fq = coll.rocchio(q2, req.relevant, req.nonrelevant, req.alpha, req.beta, req.gamma,
                                      fq=fq)
                found = sharded.search_vector(q2[0], target, req.k + len(exclude),
                                              labels=req.labels or None, exact=req.exact,
                                              distinct=req.distinct, fq=fq, on_error="skip",
                                              check_labels=False)
                hits = [h for h in found if not (h.shard is None and h.id in exclude)][:req.k]
                failed = [{"shard": n, "error": e} for n, e in found.failed]
        except KeyError as exc:
            raise HTTPException(404, str(exc.args[0])) from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        out = {"target": target, "k": req.k, "results": hit_json(hits)}
        if sharded is not None and not req.local_only:
            out["failed_shards"] = failed
        return out

    def encode_image(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        with encode_lock:
            return coll.encode_query_image(path)

    waiting: list[dict[str, Any]] = []  # text queries waiting for the encoder
    waiting_lock = threading.Lock()

    def encode_text(text: str) -> tuple[np.ndarray, np.ndarray | None]:
        """One text query through the encoder. Queries that arrive while it is busy wait
        together: the first to get it encodes every waiting one (up to 64) as one batch, which
        costs little more than one query (MiniLM, one thread: 8 queries 4.8x faster together;
        benchmarks/serve_load.py). A batch the encoder refuses is encoded query by query, so
        that a bad query fails alone, with its own error."""
        me: dict[str, Any] = {"text": text}
        with waiting_lock:
            waiting.append(me)
        with encode_lock:
            while "result" not in me and "error" not in me:  # more than 64 waiting: in turn
                with waiting_lock:
                    batch = waiting[:64]
                    del waiting[:64]
                try:
                    if len(batch) > 1:
                        try:
                            Q, FQ = coll.encode_query_texts([w["text"] for w in batch])
                        except Exception:  # a bad query among them: each alone, so it fails alone
                            pass
                        else:
                            for r, w in enumerate(batch):
                                w["result"] = Q[r:r + 1], None if FQ is None else FQ[r:r + 1]
                    for w in batch:
                        if "result" not in w:
                            try:
                                w["result"] = coll.encode_query_text(w["text"])
                            except Exception as exc:  # raised in its own request's thread
                                w["error"] = exc
                finally:  # interrupted (BaseException): no request waits for ever
                    for w in batch:
                        if "result" not in w and "error" not in w:
                            w["error"] = RuntimeError("text query encoding was interrupted")
        if "error" in me:
            raise me["error"]
        return me["result"]

    def encode_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        with encode_lock:
            return coll.encode_query_texts(texts)

    async def search_any(req: SearchRequest) -> dict[str, Any]:
        """Model work (text encoding) runs in the thread pool; the vector search itself is
        fast and runs inline, sparing a thread hop per request."""
        if req.text and not req.text.strip():  # "" is no text at all: "give exactly one" below
            raise HTTPException(422, "text: blank (only whitespace)")
        if req.fvector is not None and req.vector is None:  # a text or item query has its own
            raise HTTPException(422, "fvector goes with a binary vector query only")
        if req.check_labels:  # before a text is encoded: the target run_search will search
            if req.text:
                target = search_target(req, "text")
            elif req.item_id is not None and not req.target:
                item = coll.get_item(req.item_id)
                target = search_target(req, item.modality if item else None, same=True)
            else:
                target = search_target(req, None)
            await require_known(req.labels, target)
        if req.text and req.item_id is None and req.vector is None:
            q, fq = await run_in_threadpool(encode_text, req.text)
            return await searched(req, q, fq, "text")
        if req.text:
            raise HTTPException(422, "give exactly one of text, item_id, vector (or upload an image)")
        return await searched(req)

    async def searched(req: SearchRequest, *args: Any) -> dict[str, Any]:
        """Local searches inline; with shards in the thread pool (remote calls block)."""
        if sharded is None:
            return run_search(req, *args)
        return await run_in_threadpool(run_search, req, *args)

    def added(response: Response, rep: Any, key: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """An add's answer: 201 if it stored anything, else 200 (nothing created: the same
        upload or text sent again), with the item as it is stored."""
        item_id = coll.id_of(key)
        if not rep.added and not rep.replaced and not rep.relabelled:
            response.status_code = 200
        got = coll.get_item(item_id) if item_id is not None else None
        item = hit_json([got])[0] if got is not None else None
        if item is not None:
            item.pop("score", None)
        return {"ids": rep.ids, "added": rep.added, **(extra or {}), "unchanged": rep.unchanged,
                "id": item_id, "item": item}

    # one semaphore per event loop (a test client runs each request in a loop of its own)
    upload_slots: "weakref.WeakKeyDictionary[Any, asyncio.Semaphore]" = weakref.WeakKeyDictionary()

    @contextlib.asynccontextmanager
    async def upload_slot():
        """At most ``max_concurrent_uploads`` uploads in memory and decoded at once; the
        others wait with their bodies where the form parser spooled them (on disk past 1 MB)."""
        loop = asyncio.get_running_loop()
        sem = upload_slots.get(loop)
        if sem is None:
            sem = upload_slots[loop] = asyncio.Semaphore(max_concurrent_uploads)
        async with sem:
            yield

    async def read_upload(file: UploadFile) -> bytes:
        data = await file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, f"{file.filename}: upload over {_size(max_upload_bytes)}")
        return data

    # --------------------------------------------------------------- public routes
    @app.get("/", include_in_schema=False)
    def index_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health", response_model=None, summary="Liveness (always 200)",
             responses={200: {"model": HealthAnswer, "description": "the server is up"}})
    async def health(request: Request) -> dict[str, Any]:
        """Always 200 for load balancers; the item count and write generation only to those
        who may read (public_read on, or a read key sent)."""
        if not may_read(request):
            return {"status": "ok"}
        return {"status": "ok", "items": coll.count(), "generation": coll.store.generation()}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics",
             responses={200: {"description": "Prometheus text exposition format"}, **errors(rate=False)})
    async def metrics_route(_: str = Depends(need("read"))) -> PlainTextResponse:
        """Prometheus text; needs a read key (`Authorization: Bearer TOKEN`) when public_read is off."""
        return PlainTextResponse(metrics.render(coll), media_type="text/plain; version=0.0.4")

    # --------------------------------------------------------------- read routes
    @app.get("/api/info", response_model=None, summary="What the collection holds",
             responses=answers(InfoAnswer))
    def info(_: str = Depends(need("read"))) -> dict[str, Any]:
        """Counts, method, encoders, index, the common space's fingerprint and the labels each
        modality's items have (what a label filter can find)."""
        s = coll.stats()
        s.pop("path", None)
        if sharded is not None:
            s["shards"] = [r.url for r in remotes]
        return s

    @app.get("/api/search", response_model=None, summary="Search by text (query string)",
             responses=answers(SearchAnswer, 422))
    async def search_get(q: str = Query(..., min_length=1, max_length=2000), k: int = Query(10, ge=1, le=1000),
                   target: Literal["image", "text"] | None = None, labels: str = "",
                   exact: bool = False, distinct: bool = False,
                   _: str = Depends(need("read"))) -> dict[str, Any]:
        """A text query (1-2000 characters) in the query string; `labels` comma separated. A
        label no item of the searched modality has answers 422 naming it."""
        if not q.strip():
            raise HTTPException(422, "q: blank (only whitespace)")
        req = SearchRequest(text=q, k=k, target=target, exact=exact, distinct=distinct,
                            labels=split_labels(labels))
        return await search_any(req)

    @app.post("/api/search", response_model=None, summary="Search by text, item, or vector, with feedback",
              responses=answers(SearchAnswer, 404, 409, 413, 422))
    async def search_post(req: SearchRequest, _: str = Depends(need("read"))) -> dict[str, Any]:
        """Exactly one of `text`, `item_id` (more like this: its own modality by default) or
        `vector`; `relevant` / `nonrelevant` ids re-rank by Rocchio feedback."""
        return await search_any(req)

    @app.post("/api/search/batch", response_model=None, summary="Many text searches at once",
              responses=answers(BatchSearchAnswer, 413, 422))
    async def search_batch(req: BatchSearchRequest, _: str = Depends(need("read"))) -> dict[str, Any]:
        """Many text queries in one request: encoded together, one result list per query."""
        for r, text in enumerate(req.texts):
            if not text.strip() or len(text) > 2000:
                raise HTTPException(422, f"texts[{r}]: must be 1-2000 characters, not blank")
        await require_known(req.labels, search_target(req, "text"))
        Q, FQ = await run_in_threadpool(encode_texts, req.texts)
        one = SearchRequest(target=req.target, k=req.k, labels=req.labels, exact=req.exact,
                            distinct=req.distinct)
        out = []
        for r, text in enumerate(req.texts):
            res = await searched(one, Q[r], None if FQ is None else FQ[r:r + 1], "text")
            out.append({"query": text, **res})
        return {"queries": out}

    @app.post("/api/search/image", response_model=None, summary="Search by an uploaded image",
              responses=answers(SearchAnswer, 400, 404, 413, 415, 422))
    async def search_image(file: UploadFile = File(...), k: int = Form(10, ge=1, le=1000),
                           target: Literal["image", "text"] | None = Form(None),
                           labels: str = Form(""), relevant: str = Form(""), nonrelevant: str = Form(""),
                           exact: bool = Form(False), distinct: bool = Form(False),
                           _: str = Depends(need("read"))) -> dict[str, Any]:
        """A multipart upload (`file`), with `k`, `target`, `labels` and the feedback ids
        (`relevant`, `nonrelevant`) comma separated."""
        async with upload_slot():
            data = await read_upload(file)
            fmt = await run_in_threadpool(check_image_bytes, data, file.filename or "upload", max_image_pixels)

            def ids(s: str) -> list[int]:
                try:
                    return [int(x) for x in s.split(",") if x.strip()]
                except ValueError:
                    raise HTTPException(422, f"ids must be comma-separated integers, got {s!r}") from None

            req = SearchRequest(k=k, target=target, labels=split_labels(labels),
                                relevant=ids(relevant), nonrelevant=ids(nonrelevant), exact=exact,
                                distinct=distinct)
            await require_known(req.labels, search_target(req, "image"))
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / f"query{_FORMAT_EXT[fmt]}"
                p.write_bytes(data)
                q, fq = await run_in_threadpool(encode_image, p)
        return await searched(req, q, fq, "image")

    @app.get("/api/items", response_model=None, summary="List items, a page at a time",
             responses=answers(ItemsPage, 422))
    def items(modality: Literal["image", "text"] | None = None, offset: int = Query(0, ge=0),
              limit: int = Query(50, ge=1, le=1000), _: str = Depends(need("read"))) -> dict[str, Any]:
        """Items in id order, `limit` from `offset`; `total` counts them all (of `modality`)."""
        return {"items": hit_json(coll.list_items(modality, offset, limit)), "offset": offset,
                "limit": limit, "total": coll.count(modality)}

    @app.get("/api/items/{item_id}", response_model=None, summary="One item",
             responses=answers(ItemAnswer, 404, 422))
    def item(item_id: int, _: str = Depends(need("read"))) -> dict[str, Any]:
        """One item as results show it, without a score."""
        h = coll.get_item(item_id)
        if h is None:
            raise HTTPException(404, f"no item with id {item_id}")
        d = hit_json([h])[0]
        d.pop("score")
        return d

    @app.get("/api/items/{item_id}/thumbnail", response_class=Response, summary="An image's JPEG thumbnail",
             responses={200: {"content": JPEG_CONTENT, "description": "a JPEG"},
                        **errors(404, 413, 422, rate=False)})
    def thumbnail(item_id: int, size: int = THUMB_QUERY, _: str = Depends(need("read"))) -> Response:
        """An image item's JPEG thumbnail (a caption's: ask for its `pair_id`), cached by content."""
        if size not in THUMB_SIZES:
            raise HTTPException(422, f"size must be one of {THUMB_SIZES}")
        h = coll.get_item(item_id)
        if h is None or h.modality != "image" or not h.path:
            raise HTTPException(404, f"no image item with id {item_id}")
        return Response(make_thumbnail(coll, item_id, h.path, size), media_type="image/jpeg",
                        headers={"Cache-Control": thumb_cache()})

    def thumb_cache() -> str:
        # a private collection's thumbnail was sent for a key: a shared cache (a proxy in
        # front) must not hand it to callers without one
        return "max-age=3600" if coll.public_read else "private, max-age=3600"

    @app.get("/api/shards/{shard}/items/{item_id}/thumbnail", response_class=Response,
             summary="A remote shard's thumbnail, through this routing server",
             responses={200: {"content": JPEG_CONTENT, "description": "a JPEG"},
                        **errors(404, 422, 502, rate=False)})
    def shard_thumbnail(shard: int, item_id: int, size: int = THUMB_QUERY,
                        _: str = Depends(need("read"))) -> Response:
        """A remote shard's thumbnail fetched by this routing server with the shard's key (the
        ``proxy_thumbnail`` of a remote hit); ``shard`` is the shard's place in ``--shard``."""
        if size not in THUMB_SIZES:
            raise HTTPException(422, f"size must be one of {THUMB_SIZES}")
        if not 0 <= shard < len(remotes):
            raise HTTPException(404, f"no shard {shard}: this server routes to {len(remotes)}")
        return Response(fetch_shard_thumbnail(remotes[shard], item_id, size), media_type="image/jpeg",
                        headers={"Cache-Control": thumb_cache()})

    # --------------------------------------------------------------- write routes
    @app.post("/api/items", status_code=201, response_model=None, summary="Add an image and its captions",
              responses=add_answers(400, 413, 415, 422))
    async def add_image(request: Request, response: Response, file: UploadFile = File(...), captions: str = Form(""),
                        labels: str = Form(""), key: str | None = Form(None),
                        actor: str = Depends(need("write"))) -> dict[str, Any]:
        """A multipart upload: `file`, `captions` one per line, `labels` comma separated, an
        optional `key` (else one made from the content's hash)."""
        async with upload_slot():
            return await add_upload(request, response, file, captions, labels, key, actor)

    async def add_upload(request: Request, response: Response, file: UploadFile, captions: str, labels: str,
                         key: str | None, actor: str) -> dict[str, Any]:
        data = await read_upload(file)
        fmt = await run_in_threadpool(check_image_bytes, data, file.filename or "upload", max_image_pixels)
        digest = hashlib.sha256(data).hexdigest()
        key = safe_key(key) if key else f"upload/{digest[:16]}{_FORMAT_EXT[fmt]}"
        # The client's file name is never used as a path: uploads are named by content hash.
        dest = coll.path.resolve() / "files" / f"{digest}{_FORMAT_EXT[fmt]}"  # absolute: any cwd
        labs = check_labels(labels.split(",") if labels.strip() else [], "labels", skip_blank=True)
        caps = [c.strip() for c in captions.splitlines() if c.strip()]
        for i, cap in enumerate(caps):  # the limit of POST /api/texts
            if len(cap) > MAX_TEXT:
                raise HTTPException(422, f"captions[{i}]: over {MAX_TEXT} characters")

        def add() -> Any:
            # The bytes go to a name of this request's own, encoded from there without any
            # lock but the query one; only under the collection's writer lock do they take
            # their place in files/. A delete (here or in another process: `xmodal remove`)
            # removes uploads no item uses under that same lock, so it can never remove the
            # file between its writing and the add that uses it.
            staged = dest.with_name(f".upload-{secrets.token_hex(8)}{dest.suffix}")
            atomic_write_bytes(staged, data)
            try:
                # the encoders under the query lock; the store and index files without it,
                # so searches go on while they are written
                with encode_lock:
                    Fi, ok = encode_items(coll.encoder("image"), [str(staged)])
                    Ft = encode_items(coll.encoder("text"), caps)[0] if caps else None
                if not ok.all():
                    return None
                with coll.writing():
                    if not dest.exists():  # else the same bytes (named by their hash) are there
                        os.replace(staged, dest)
                    try:
                        rep = coll.add_items([ImageItem(key=key, path=str(dest), labels=labs)],
                                             [TextItem(key=f"{key}#{j}", text=c, pair_key=key, labels=labs)
                                              for j, c in enumerate(caps)], image_features=Fi,
                                             text_features=Ft, actor=actor, remote=remote(request))
                    except BaseException:
                        drop_if_unused()
                        raise
                    if rep.skipped:
                        drop_if_unused()
                    return rep
            finally:
                staged.unlink(missing_ok=True)

        def drop_if_unused() -> None:  # a failed add leaves no stray copy behind (write lock held)
            # by file name, as the collection decides: an item stored before the collection
            # moved names this same file under its old place
            if not coll.uploads_in_use([dest.name]):
                dest.unlink(missing_ok=True)

        rep = await run_in_threadpool(add)
        if rep is None or rep.skipped:
            raise HTTPException(400, f"{file.filename}: the image encoder could not read it")
        return added(response, rep, key, {"replaced": rep.replaced})

    @app.post("/api/texts", status_code=201, response_model=None, summary="Add a text",
              responses=add_answers(400, 404, 413, 422))
    def add_text(req: TextAdd, request: Request, response: Response,
                 actor: str = Depends(need("write"))) -> dict[str, Any]:
        """A text item, optionally a caption of the image `pair_id`."""
        pair_key = None
        if req.pair_id is not None:
            p = coll.get_item(req.pair_id)
            if p is None or p.modality != "image":
                raise HTTPException(404, f"no image item with id {req.pair_id}")
            pair_key = p.key
        if not req.text.strip():  # would be indexed as a blank caption
            raise HTTPException(422, "text: empty (only whitespace)")
        labels = check_labels(req.labels, "labels")
        key = safe_key(req.key) if req.key else f"text/{hashlib.sha256(req.text.encode()).hexdigest()[:16]}"
        with encode_lock:
            F, _ = encode_items(coll.encoder("text"), [req.text])
        rep = coll.add_items((), [TextItem(key=key, text=req.text, pair_key=pair_key, labels=labels)],
                             text_features=F, actor=actor, remote=remote(request))
        return added(response, rep, key)

    @app.delete("/api/items/{item_id}", response_model=None, summary="Delete an item",
                responses=answers(DeleteAnswer, 404, 422, write=True))
    def delete_item(item_id: int, request: Request, actor: str = Depends(need("write"))) -> dict[str, Any]:
        """Delete an item; an image takes its captions along."""
        gone = coll.delete(ids=[item_id], actor=actor, remote=remote(request))
        if not gone:
            raise HTTPException(404, f"no item with id {item_id}")
        return {"deleted": gone}

    # --------------------------------------------------------------- admin routes
    @app.get("/api/keys", response_model=None, summary="List API keys (never their secrets)",
             responses=answers(KeyList))
    def keys(_: str = Depends(need("admin"))) -> dict[str, Any]:
        """Every key made for this collection, revoked ones too (as `xmodal keys list --json`)."""
        return {"keys": auth.list_keys(coll)}

    @app.post("/api/keys", status_code=201, response_model=None, summary="Make an API key",
              responses=answers(KeyMade, 413, 422, status=201, description="the new key", write=True))
    def make_key(req: KeyCreate, request: Request, actor: str = Depends(need("admin"))) -> dict[str, Any]:
        """A new key of `role`; its token is in this answer only (as `xmodal keys add --json`)."""
        token = auth.create_key(coll, req.role, req.name, actor=actor, remote=remote(request))
        return {"token": token, "role": req.role, "key_id": token[len(auth.PREFIX):].split("_")[0],
                "name": req.name}

    @app.delete("/api/keys/{key_id}", response_model=None, summary="Revoke an API key",
                responses=answers(KeyRevoked, 404, write=True))
    def drop_key(key_id: str, request: Request, actor: str = Depends(need("admin"))) -> dict[str, Any]:
        """Revoke the key `key_id` (the part of its token after `xmk_`); it stops working at once."""
        try:
            auth.revoke_key(coll, key_id, actor=actor, remote=remote(request))
        except auth.KeyError_ as exc:
            raise HTTPException(404, str(exc)) from None
        return {"revoked": key_id, "key_id": key_id}

    @app.get("/api/audit", response_model=None, summary="The audit log, newest first",
             responses=answers(AuditPage, 422))
    def audit(limit: int = Query(100, ge=1, le=10000), offset: int = Query(0, ge=0),
              _: str = Depends(need("admin"))) -> dict[str, Any]:
        """Every write (adds, deletes, keys, settings) with its key id and client address,
        newest first, `limit` from `offset`."""
        # the newest offset + limit entries, the first offset dropped: Collection.audit_log's
        # records, paged (offset bounded by the log's length)
        total = int(coll.store.query("SELECT COUNT(*) FROM audit")[0][0])
        entries = coll.audit_log(min(offset, total) + limit)[offset:] if offset < total else []
        return {"entries": entries, "offset": offset, "limit": limit, "total": total}

    @app.put("/api/settings", response_model=None, summary="Change the collection's access settings",
             responses=answers(Settings, 413, 422, write=True))
    def settings(req: Settings, request: Request, actor: str = Depends(need("admin"))) -> dict[str, Any]:
        """`public_read`: whether search, items and thumbnails need no key."""
        coll.set_setting("public_read", req.public_read, actor=actor, remote=remote(request))
        return {"public_read": coll.public_read}

    @app.exception_handler(ReadOnlyError)
    async def read_only(_: Request, exc: ReadOnlyError) -> JSONResponse:
        return JSONResponse({"detail": scrub(str(exc))}, status_code=403)

    @app.exception_handler(DataError)
    async def data_error(_: Request, exc: DataError) -> JSONResponse:
        return JSONResponse({"detail": scrub(str(exc))}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # FastAPI's own answer (no body where the status allows none), its detail scrubbed
        if isinstance(exc.detail, str):
            exc = StarletteHTTPException(exc.status_code, scrub(exc.detail), exc.headers)
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        # JSON as every other error (the page shows `detail`); Starlette re-raises the
        # exception after this answer, so the traceback goes to the server log, not the client
        return JSONResponse({"detail": f"internal server error ({type(exc).__name__}); "
                                       "the server log has the details"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's own handler echoes the input as UTF-8; a lone surrogate (valid JSON:
        # "\ud800") cannot be encoded and turned the 422 into a 500. ASCII escapes can.
        # A NaN / Infinity input echoed as such is no JSON a strict parser (a browser's) takes.
        # A large input (a 70 000-number vector, a 100 KB text) is not sent back: the message
        # says what is wrong with it; echoing it cost as much as the request, or more.
        errors = [{**e, "input": _finite_or_text(e["input"])} if "input" in e else e
                  for e in jsonable_encoder([_small_input(e) for e in exc.errors()])]
        kind = request.headers.get("content-type", "")
        if "json" not in kind.lower():
            # a JSON body sent without its header (curl -d sends form encoding) reaches the
            # model as one string: say which header to send
            for e in errors:
                if tuple(e.get("loc", ())) == ("body",) and e.get("type") == "model_attributes_type":
                    e["msg"] += f" (the body was sent as {kind or 'no Content-Type'}; send JSON with " \
                                "Content-Type: application/json)"
        body = json.dumps({"detail": errors}, ensure_ascii=True, allow_nan=False)
        return Response(body, status_code=422, media_type="application/json")

    return app


ECHO_LIMIT = 200  # characters of a string, items of a list or dict: larger inputs are not echoed


def _small(value: Any, budget: list[int]) -> bool:
    """Whether ``value`` is small enough to echo (``budget``: items left to look at)."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if isinstance(value, (str, bytes)):
        return len(value) <= ECHO_LIMIT
    if isinstance(value, dict):
        return len(value) <= ECHO_LIMIT and all(_small(v, budget) for v in value.values())
    if isinstance(value, (list, tuple)):
        return len(value) <= ECHO_LIMIT and all(_small(v, budget) for v in value)
    return True


def _small_input(error: Mapping[str, Any]) -> dict[str, Any]:
    """A validation error without its ``input`` when that is large."""
    if "input" in error and not _small(error["input"], [ECHO_LIMIT]):
        return {k: v for k, v in error.items() if k != "input"}
    return dict(error)


def _finite_or_text(value: Any) -> Any:
    """``value`` with every NaN / infinite float written as text ("NaN", "Infinity")."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)
    if isinstance(value, list):
        return [_finite_or_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_text(v) for k, v in value.items()}
    return value


def fetch_shard_thumbnail(shard: RemoteShard, item_id: int, size: int) -> bytes:
    """``shard``'s JPEG thumbnail of ``item_id``, asked with the key this server holds for it
    (:meth:`RemoteShard.fetch`: no redirect, one deadline for the whole answer). The shard's
    404 stays a 404; any other failure is a 502 naming the shard, never its key."""
    try:
        data, kind = shard.fetch(f"/api/items/{item_id}/thumbnail?size={size}",
                                 max_bytes=MAX_PROXIED_THUMBNAIL)
    except ShardHTTPError as exc:
        if exc.code == 404:
            raise HTTPException(404, f"shard {shard.url}: no image item with id {item_id}") from None
        raise HTTPException(502, str(exc)) from None
    except CollectionError as exc:
        raise HTTPException(502, str(exc)) from None
    if not kind.startswith("image/jpeg"):
        raise HTTPException(502, f"shard {shard.url}: thumbnail answer is not a JPEG thumbnail")
    return data


def make_thumbnail(coll: Collection, item_id: int, path: str, size: int) -> bytes:
    """A JPEG thumbnail, cached under the collection by content hash and size."""
    from PIL import Image

    from ..encoders.images import ImageReadError, open_image

    rows = coll.store.query("SELECT content_hash FROM items WHERE id = ?", (item_id,))
    tag = rows[0][0] if rows and rows[0][0] else f"id{item_id}"
    cached = thumb_file(coll.path / "thumbs", tag, size)
    if cached.exists():
        return cached.read_bytes()
    # The collection's own images were indexed under the encoders' limit (Pillow's, ~89 Mpx:
    # a 48 Mpx phone photo is fine); the lower upload limit is for strangers' files. Decoded as
    # the encoders decode (open_image): upright, JPEGs at reduced scale checked as decoded.
    limit = max(MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS or 0)
    if not Path(path).exists():
        raise HTTPException(404, f"item {item_id}: image file is gone")
    try:
        im = open_image(path, limit, draft_size=size)
    except ImageReadError as exc:
        status = 413 if "decompression bomb" in str(exc) else 500
        raise HTTPException(status, f"item {item_id}: cannot thumbnail the image ({exc})") from None
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    data = buf.getvalue()
    try:
        atomic_write_bytes(cached, data)
        for suffix in THUMB_SUFFIXES[1:]:  # an older xmodal's thumbnail of it is replaced
            thumb_file(cached.parent, tag, size, suffix).unlink(missing_ok=True)
    except OSError:  # a read-only mount or a full disk: serve it uncached
        pass
    return data
