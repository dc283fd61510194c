"""The HTTP API and web page over one collection (FastAPI; OpenAPI schema at /openapi.json).

Read routes (search, items, thumbnails) are open when the collection's ``public_read`` setting
is on, else they need a key with role ``read``; adding and deleting need ``write``; keys,
settings and the audit log need ``admin``. Send keys as ``X-API-Key: TOKEN`` or
``Authorization: Bearer TOKEN``, never in the URL (``?api_key=`` is refused: URLs end up in
access logs, proxy logs, browser history and Referer headers); the web page fetches a private
collection's thumbnails with the header and shows them as ``blob:`` URLs.

This module holds :func:`create_app` with its routes, dependencies and error handlers, and the
thumbnails the routes serve (:func:`make_thumbnail`, :func:`fetch_shard_thumbnail`). The
request and answer models and the OpenAPI ``responses`` helpers are in
:mod:`xmodal.service.schemas`; the ASGI layers (body limit, rate limit, security headers,
metrics) in :mod:`xmodal.service.middleware`; the checks of uploads, labels and item keys in
:mod:`xmodal.service.checks`. Their public names are importable from here too, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import math
import os
import secrets
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.concurrency import run_in_threadpool

from ..data.dataset import DataError
from .._fs import atomic_write_bytes
from ..index.collection import (DB_NAME, THUMB_SIZES, Collection, Hit, ImageItem, ReadOnlyError, TextItem,
                                THUMB_SUFFIXES, encode_items, read_only_error, thumb_file)
from ..index.collection_search import RERANK_FACTOR
from ..index.shards import (RemoteShard, ShardedCollection, ShardHTTPError, UnknownLabelError,
                            check_labels as check_known_labels, shard_keys)
from ..index.store import CollectionError
from . import auth
# what the routes use, and what was defined here before the split (importable from here as before)
from .checks import (MAX_IMAGE_PIXELS, MAX_LABEL, _FORMAT_EXT, check_image_bytes, check_labels, safe_key,
                     search_target, split_labels)
from .middleware import (PAGE_CSP, BodyLimit, FiniteJSONResponse, HeadAndSlash, Metrics, Observe, RateLimit,
                         RefuseWrites,
                         SecurityHeaders, _size)
from .schemas import (ADD_RESPONSES, ERRORS, JPEG_CONTENT, MAX_TEXT, WRITE_403, AddAnswer, AuditEntry, AuditPage,
                      BatchQueryAnswer, BatchSearchAnswer, BatchSearchRequest, DeleteAnswer, ErrorBody,
                      FailedShard, Finite, HealthAnswer, HitAnswer, InfoAnswer, ItemAnswer, ItemsPage, KeyCreate,
                      KeyList, KeyMade, KeyRecord, KeyRevoked, LabelList, LabelStr, ListedItem, SearchAnswer,
                      SearchRequest, Settings, TextAdd, Utf8Str, ValidationIssue, add_answers, answers, errors)

__all__ = [
    # defined here
    "create_app", "sweep_staged_uploads", "make_thumbnail", "fetch_shard_thumbnail", "write_routes", "STATIC",
    "MAX_UPLOAD_BYTES", "MAX_JSON_BYTES", "SHARD_KEY_HINT", "MAX_CONCURRENT_UPLOADS", "THUMB_QUERY",
    "MAX_PROXIED_THUMBNAIL", "STAGED_UPLOAD_TTL", "ECHO_LIMIT",
    # checks.py
    "MAX_IMAGE_PIXELS", "MAX_LABEL", "check_image_bytes", "check_labels", "safe_key", "search_target",
    "split_labels",
    # middleware.py
    "PAGE_CSP", "BodyLimit", "FiniteJSONResponse", "HeadAndSlash", "Metrics", "Observe", "RateLimit",
    "RefuseWrites", "SecurityHeaders",
    # schemas.py
    "ADD_RESPONSES", "ERRORS", "JPEG_CONTENT", "MAX_TEXT", "WRITE_403", "AddAnswer", "AuditEntry", "AuditPage",
    "BatchQueryAnswer", "BatchSearchAnswer", "BatchSearchRequest", "DeleteAnswer", "ErrorBody", "FailedShard",
    "Finite", "HealthAnswer", "HitAnswer", "InfoAnswer", "ItemAnswer", "ItemsPage", "KeyCreate", "KeyList",
    "KeyMade", "KeyRecord", "KeyRevoked", "LabelList", "LabelStr", "ListedItem", "SearchAnswer", "SearchRequest",
    "Settings", "TextAdd", "Utf8Str", "ValidationIssue", "add_answers", "answers", "errors",
]

STATIC = Path(__file__).parent / "static"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# any body but a multipart upload: the largest search (256 texts of 2000 characters, each
# \uXXXX-escaped as JSON clients do by default) is ~3 MB; parsing 20 MB of "0," would build
# a list of ten million numbers before its length is checked
MAX_JSON_BYTES = 4 * 1024 * 1024
# how a routing server is given the key it sends to its shards (named when one answers 401/403)
SHARD_KEY_HINT = ("--shard-api-key or $XMODAL_SHARD_API_KEY (URL=KEY for this shard alone; "
                  "shard_api_key= in create_app)")
# uploads read, decoded (checked) and encoded at once: each may take ~120 MB of pixels
MAX_CONCURRENT_UPLOADS = 4
# listed in the schema; a size outside it answers 422 naming the sizes
THUMB_QUERY = Query(256, description="the thumbnail's longer side in pixels",
                    json_schema_extra={"enum": list(THUMB_SIZES)})
MAX_PROXIED_THUMBNAIL = 4 * 1024 * 1024  # a shard's 512 px JPEG is far smaller


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
    # outside the rate limit: a write a read-only collection can never take is a 403 that
    # spends none of the client's budget (and is told before its body is read)
    app.add_middleware(RefuseWrites, refusal=lambda: read_only_refusal() if coll.read_only else None,
                       write_routes=lambda: write_routes(app))
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

    def read_only_refusal() -> str:
        # its folder scrubbed, as every client error's
        return scrub(str(read_only_error(coll.path, coll.path / DB_NAME)))

    def need(role: str):
        async def dep(request: Request) -> str:  # async: SQLite lookups of microseconds, no thread hop
            if role != "read" and request.method not in ("GET", "HEAD") and coll.read_only:
                # a write the collection cannot take is refused as such, whatever the key:
                # checked first, a snapshot made without its keys answered a key with 401
                # (RefuseWrites answers it before this, outside the rate limit)
                raise HTTPException(403, read_only_refusal())
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
        dep.role = role  # type: ignore[attr-defined]  (write_routes finds the writes by it)
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
        if not req.rerank:  # a router whose other shards answer by Hamming
            fq = None
        rerank = RERANK_FACTOR if fq is not None else 0
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
        s["max_upload_bytes"] = max_upload_bytes  # the page refuses a larger file before sending it
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

    def no_shard(shard: int) -> str:
        """The 404 of a shard number this server does not have: the numbers it does have, each
        with its URL (what /api/info's `shards` lists, in that order), not a bare count."""
        if not remotes:
            return f"no shard {shard}: this server routes to no remote shards (started without --shard)"
        have = ", ".join(f"{i} = {r.url}" for i, r in enumerate(remotes[:10]))
        more = f", … ({len(remotes)} in all)" if len(remotes) > 10 else ""
        return f"no shard {shard}: this server's remote shards are numbered from 0 in --shard order: {have}{more}"

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
            raise HTTPException(404, no_shard(shard))
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


# ------------------------------------------------------------------------- validation errors
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


def write_routes(app: FastAPI) -> list[APIRoute]:
    """``app``'s routes that write: a method other than GET or HEAD, guarded by a role above
    read (``need``'s dependency carries its role)."""
    return [r for r in app.routes if isinstance(r, APIRoute) and set(r.methods) - {"GET", "HEAD"}
            and any(getattr(d.call, "role", "read") != "read" for d in r.dependant.dependencies)]


# ------------------------------------------------------------------------- thumbnails
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
