"""Search several collections as one: shards on this machine or behind other ``xmodal serve``s.

A collection grows past one machine by splitting its items into shards that share one common
space: each shard is indexed with the same fitted method and encoders (``xmodal index SOURCE
-c shard2.xmc --like shard1.xmc``, which also reuses fitted encoders such as a tf-idf
vocabulary), which :attr:`Collection.space` fingerprints. A query is encoded once, sent to every shard as
a common-space vector (local shards directly, remote ones through ``POST /api/search``, in
parallel), and the per-shard top-k lists are merged by score. Every shard returns its own
top k, so with exact (flat) indexes the merge is exactly the top k of the union.
"""

from __future__ import annotations

import json
import math
import reprlib
import socket
import ssl
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from .. import __version__
from .collection import Collection, CollectionError, Hit
from .collection_search import RERANK_FACTOR

if TYPE_CHECKING:  # imported when a remote shard is first asked (about 0.1 s of imports)
    import httpx

MAX_REMOTE_K = 1000  # the most hits `xmodal serve` answers per query (its k limit)
# The most bytes read of a shard's JSON answer: 1000 hits with long captions, or /api/info
# with many labels, stay far below; a server streaming without end does not fill the memory.
MAX_JSON_ANSWER = 256 << 20
_ERROR_BYTES = 1 << 14  # of an error answer: an xmodal JSON error whole; another page is cut


@dataclass
class RemoteHit(Hit):
    """A hit from a remote shard, with the caption its server shows for an image (a routing
    server cannot look it up: the item is in the other server's store)."""

    caption: str | None = None


class _Deadline:
    """One deadline for a whole exchange. httpx's timeouts bound each connect, read and write,
    not the answer (encode/httpx#1450): a server trickling a byte at a time would hold a call
    (and its worker) for ever, and one stalling mid-answer for a whole read timeout past the
    deadline. Every network step of the call waits at most what is left of it
    (:class:`_DeadlineStream`), so the call ends at its deadline whatever the server does."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False

    def left(self) -> float:
        return self.at - time.monotonic()

    def bound(self, timeout: float | None, error: type[Exception]) -> float:
        """``timeout`` cut to what is left; ``error`` once nothing is."""
        left = self.left()
        if left <= 0:
            self.expired = True
            raise error("the whole answer's deadline passed")
        return left if timeout is None else min(timeout, left)


_CALL = threading.local()  # .deadline: that of the call this thread makes (httpcore's I/O runs in the caller)


def _bound(timeout: float | None, kind: str) -> float | None:
    import httpcore

    deadline = getattr(_CALL, "deadline", None)
    return timeout if deadline is None else deadline.bound(timeout, getattr(httpcore, kind))


class _DeadlineStream:
    """An httpcore network stream whose every read and write waits at most what is left of
    the calling thread's deadline (httpcore sets the socket's timeout per step)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bound(timeout, "ReadTimeout"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bound(timeout, "WriteTimeout"))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> "_DeadlineStream":
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _bound(timeout, "ConnectTimeout")))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend:
    """httpcore's network backend with every connection a :class:`_DeadlineStream`."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, *args: Any,
                    **kw: Any) -> _DeadlineStream:
        return _DeadlineStream(self._backend.connect_tcp(host, port, _bound(timeout, "ConnectTimeout"),
                                                         *args, **kw))

    def connect_unix_socket(self, path: str, timeout: float | None = None, *args: Any,
                            **kw: Any) -> _DeadlineStream:
        return _DeadlineStream(self._backend.connect_unix_socket(path, _bound(timeout, "ConnectTimeout"),
                                                                 *args, **kw))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


class ShardHTTPError(CollectionError):
    """A shard answered an HTTP error (``code``: its status)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class RemoteShard:
    """A collection served by ``xmodal serve`` at ``url``, searched by vector over HTTP (one
    ``httpx.Client`` per shard: its connections are kept open between calls)."""

    #: how a user gives the key sent to a shard; named when a shard answers 401/403
    KEY_HINT = ("--api-key or $XMODAL_API_KEY (xmodal serve: --shard-api-key or $XMODAL_SHARD_API_KEY; "
                "URL=KEY for this shard alone)")

    def _timed_out(self, path: str) -> CollectionError:
        return CollectionError(f"shard {self.url}: {path} timed out (no complete answer within "
                               f"{self.timeout:g} s)")

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 30.0,
                 key_hint: str | None = None) -> None:
        try:
            parts = urllib.parse.urlparse(url)
        except ValueError as exc:  # an unclosed [IPv6 address
            raise CollectionError(f"shard {url!r}: not a URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise CollectionError(f"shard {url!r}: expected an http(s)://host:port URL")
        # The URL names the shard to clients (every hit's `shard` and `thumbnail`, /api/info,
        # errors): a password in it would be shown to anyone who may search.
        if parts.username is not None or parts.password is not None:
            raise CollectionError(f"shard {parts.scheme}://{parts.hostname}: the URL carries a user name or "
                                  "password, which every hit would show; send a key of the shard's "
                                  f"instead ({key_hint or self.KEY_HINT})")
        for part, what in ((parts.query, "query"), (parts.fragment, "fragment")):
            if part:
                raise CollectionError(f"shard {url!r}: a {what} (?... or #...) has no place in a shard "
                                      "URL; give http(s)://host:port (and a path prefix, if any)")
        try:
            parts.port  # noqa: B018  (raises on a port that is not a number 0-65535)
        except ValueError:
            raise CollectionError(f"shard {url!r}: the port is not a number 0-65535") from None
        # what a request cannot be sent to failed at the first call with a bare UnicodeError
        host = parts.hostname or ""
        try:
            host.encode("idna")
        except UnicodeError as exc:  # an empty or over-long label: a..b, 64+ characters
            raise CollectionError(f"shard {url!r}: the host name is not a valid one ({exc})") from None
        if not host or not host.isprintable() or any(c.isspace() for c in host):
            raise CollectionError(f"shard {url!r}: the host name is not a valid one (spaces or "
                                  "control characters)")
        # every network step waits at most what is left of it: nan or inf failed at the first
        # call with a bare ValueError / OverflowError (`--shard-timeout inf` passes min=0.1)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise CollectionError(f"shard {url.rstrip('/')}: the timeout must be a number of seconds over 0 "
                                  f"(and finite), got {timeout!r}")
        # A header carries printable ASCII only: a key with a line break or a non-ASCII
        # character failed at the first call with an error quoting it. Said here, unquoted.
        if api_key and not (api_key.isascii() and api_key.isprintable() and api_key.strip() == api_key):
            raise CollectionError(f"shard {url.rstrip('/')}: the API key given for it has spaces, line "
                                  "breaks or non-ASCII characters, which an X-API-Key header cannot carry "
                                  f"(a key is xmk_...; {key_hint or self.KEY_HINT})")
        self.url = url.rstrip("/")
        self.api_key, self.timeout = api_key, timeout
        self.key_hint = key_hint or self.KEY_HINT
        self._client: httpx.Client | None = None  # made at the first call (its TLS setup costs)
        self._client_lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        self._labels: set[str] = set()  # labels seen on this shard (they are rarely removed)
        # the same per modality, from a server whose /api/info has labels_by_target (older
        # ones answer labels only: then a label on either modality counts)
        self._labels_by_target: dict[str, set[str]] | None = None

    def __repr__(self) -> str:
        return f"RemoteShard({self.url!r})"

    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                import httpx

                transport = httpx.HTTPTransport(
                    # the system's CAs (and $SSL_CERT_FILE), as urllib used: a shard behind a
                    # proxy with a private CA keeps working
                    verify=ssl.create_default_context(),
                    # idle connections are dropped before uvicorn's (5 s) are: a call on one
                    # the server is closing would fail as "disconnected without a response"
                    limits=httpx.Limits(keepalive_expiry=2.0),
                    # httpcore writes a POST's headers and body apart: without TCP_NODELAY,
                    # Nagle holds the body for the server's delayed ACK (2 ms a query here;
                    # http.client sent both in one write)
                    socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
                # httpx has no deadline for a whole request (encode/httpx#1450) nor a public
                # way to its network backend: the pool's is wrapped (tested: without it a
                # trickling server holds a call a read timeout per byte)
                pool = getattr(transport, "_pool", None)
                if hasattr(pool, "_network_backend"):
                    pool._network_backend = _DeadlineBackend(pool._network_backend)
                self._client = httpx.Client(
                    # a redirect is refused, not followed: the API key would go along to
                    # whatever host the Location names
                    follow_redirects=False, transport=transport,
                    # an answer read raw: its size limit is the size kept
                    headers={"User-Agent": f"xmodal/{__version__}", "Accept-Encoding": "identity"})
            return self._client

    def close(self) -> None:
        """Close the connections kept to the server (a later call opens new ones)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def __del__(self) -> None:  # dropped unclosed: its kept connections close with it, not later
        try:
            self.close()
        except Exception:  # at interpreter exit, modules may be gone already
            pass

    def fetch(self, path: str, body: dict | None = None, max_bytes: int | None = None) -> tuple[bytes, str]:
        """``(bytes, content type)`` of the shard's answer to ``path`` (a GET, or a POST of the
        JSON ``body``), sent with this shard's key, redirects refused, the whole answer under
        one deadline and, with ``max_bytes``, at most that long. Failures are a
        :class:`CollectionError` naming the shard (:class:`ShardHTTPError` with the status for
        an HTTP error answer), never its key."""
        import httpx

        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        client = self._http()
        deadline = _Deadline(self.timeout)
        _CALL.deadline = deadline  # read by this thread's network steps (_DeadlineStream)
        try:
            with client.stream("GET" if body is None else "POST", self.url + path, content=content,
                               headers=headers, timeout=self.timeout) as resp:
                ok = 200 <= resp.status_code < 300
                data = self._read(resp, deadline, path, max_bytes if ok else _ERROR_BYTES, cut=not ok)
        except httpx.HTTPError as exc:
            raise self._failure(path, exc, deadline.expired) from None
        except httpx.InvalidURL as exc:  # a host name httpx cannot send (urlparse took it)
            raise CollectionError(f"shard {self.url}: not a URL a request can go to ({exc})") from None
        finally:
            _CALL.deadline = None
        if not ok:
            raise self._http_error(path, resp, data)
        return data, resp.headers.get("Content-Type", "")

    def _read(self, resp: httpx.Response, deadline: _Deadline, path: str, limit: int | None,
              cut: bool) -> bytes:
        """The body of ``resp`` before the deadline, at most ``limit`` bytes (more is refused,
        or with ``cut``, left unread)."""
        if deadline.left() <= 0:  # the headers came just as the deadline passed
            raise self._timed_out(path)
        try:
            size = int(resp.headers.get("Content-Length", ""))
        except ValueError:
            size = None
        if limit is not None and not cut and size is not None and size > limit:  # said at once
            raise CollectionError(f"shard {self.url}: {path} answered over {limit} bytes")
        chunks, n = [], 0
        for piece in resp.stream:
            if deadline.left() <= 0:
                raise self._timed_out(path)
            chunks.append(piece)
            n += len(piece)
            if limit is not None and n > limit:
                if cut:
                    break
                raise CollectionError(f"shard {self.url}: {path} answered over {limit} bytes")
        data = b"".join(chunks)
        return data[:limit] if cut else data

    def _failure(self, path: str, exc: Exception, expired: bool) -> CollectionError:
        """What an httpx error means for the user (``expired``: the deadline cut it)."""
        import httpx

        if expired or isinstance(exc, httpx.TimeoutException):
            return self._timed_out(path)
        if isinstance(exc, httpx.RemoteProtocolError):  # not HTTP (an ssh or database port), a broken answer
            return CollectionError(f"shard {self.url}: {path} did not answer HTTP ({type(exc).__name__}: "
                                   f"{str(exc)[:80] or 'no detail'}); is it an `xmodal serve`?")
        cause = exc
        while cause is not None and not isinstance(cause, ssl.SSLError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:  # https:// to a plain-HTTP port, or a certificate not trusted here
            why = getattr(cause, "verify_message", None) or getattr(cause, "reason", None) or cause
            return CollectionError(f"shard {self.url}: no TLS connection ({why}); `xmodal serve` itself "
                                   "speaks plain HTTP: give http://, or the https:// of a TLS proxy "
                                   "in front of it with a certificate this machine trusts")
        return CollectionError(f"shard {self.url}: unreachable ({str(exc) or type(exc).__name__})")

    def _http_error(self, path: str, resp: httpx.Response, data: bytes) -> ShardHTTPError:
        code = resp.status_code
        detail = _error_words(data.decode("utf-8", "replace"))
        if code in (401, 403):  # a private shard: say which key is missing and how to send one
            return ShardHTTPError(code, self._key_message(path, code, detail))
        if 300 <= code < 400:
            where = resp.headers.get("Location")
            return ShardHTTPError(code, f"shard {self.url}: {path} answered HTTP {code}, a redirect "
                                  f"to {where or '(no Location)'}; redirects are not followed (the API "
                                  "key would go along): give the shard's own URL")
        return ShardHTTPError(code, f"shard {self.url}: {path} answered HTTP {code}: {detail}")

    def _call(self, path: str, body: dict | None = None) -> Any:
        data, _ = self.fetch(path, body, max_bytes=MAX_JSON_ANSWER)
        try:
            out = json.loads(data)
        # some other web server at that address (RecursionError: garbage nested past the
        # recursion limit, which json does not turn into a ValueError)
        except (ValueError, RecursionError):
            raise CollectionError(f"shard {self.url}: {path} did not answer JSON; is it an "
                                  f"`xmodal serve`? (got {data[:80]!r})") from None
        if not isinstance(out, dict):
            raise CollectionError(f"shard {self.url}: {path} answered {type(out).__name__}, "
                                  "not a JSON object; is it an `xmodal serve`?")
        return out

    def _key_message(self, path: str, code: int, detail: str) -> str:
        if code == 401 and not self.api_key:
            why = "it is private (public_read off) and no API key was sent"
        elif code == 401:
            why = ("it refused the API key sent (unknown or revoked there: keys belong to one "
                   "collection, so it must be one made on that shard)")
        else:
            why = "the API key sent lacks the role this needs"
        # what the shard refused, without its own cure (a header, for curl users): the
        # option to use is said below
        detail = detail.split(": send it as", 1)[0]
        return (f"shard {self.url}: {path} answered HTTP {code}: {why} ({detail}); send a read key "
                f"of that shard (`xmodal keys add -c SHARD --role read` there) with {self.key_hint}")

    def stats(self) -> dict[str, Any]:
        """The server's ``/api/info``, fetched anew (its item counts change as it grows)."""
        info = self._call("/api/info")
        labels = info.get("labels") or []
        # read by set() here and by every caller (sorted, unioned): a wrong type raised a
        # TypeError where a router starts or checks a label filter
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise CollectionError(f"shard {self.url}: /api/info labels: not a list of strings "
                                  f"({reprlib.repr(labels)}); is it an `xmodal serve`?")
        for field in ("images", "texts"):
            n = info.get(field)
            # summed by a router's stats: None or a string raised TypeError there
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise CollectionError(f"shard {self.url}: /api/info {field}: not a count of items "
                                      f"({reprlib.repr(n)}); is it an `xmodal serve`?")
        self._info = info
        self._labels.update(labels)
        by = _labels_by_target(self._info)
        if by is not None:
            seen = self._labels_by_target or {"image": set(), "text": set()}
            for m in ("image", "text"):
                seen[m] |= by[m]
            self._labels_by_target = seen
        return self._info

    def labels_seen(self, target: str | None = None, fresh: bool = False) -> set[str]:
        """The labels this shard was seen to have (on ``target`` items, where the server says
        which; an older one's labels count for both); ``fresh``: those of its last /api/info only."""
        if fresh:
            info = self._info or {}
            by = _labels_by_target(info)
            if target is not None and by is not None:
                return by[target]
            return set(info.get("labels") or ())
        if target is not None and self._labels_by_target is not None:
            return self._labels_by_target[target]
        return self._labels

    @property
    def space(self) -> str | None:
        """The common-space fingerprint (fixed for a server's life: fetched once)."""
        if self._info is None:
            self.stats()
        return self._info.get("space")

    def search(self, body: dict[str, Any]) -> list[Hit]:
        # a server answers at most MAX_REMOTE_K hits; asking for more would be a 422
        out = self._call("/api/search", {**body, "k": min(int(body["k"]), MAX_REMOTE_K)})
        fields = RemoteHit.__dataclass_fields__
        try:
            hits = [RemoteHit(**{k: v for k, v in h.items() if k in fields}) for h in out["results"]]
        except (KeyError, TypeError, AttributeError):
            raise CollectionError(f"shard {self.url}: /api/search answered no results list; "
                                  "is it an `xmodal serve`?") from None
        for r, h in enumerate(hits):
            self._check_hit(r, h, body.get("target"))
        return hits

    def _check_hit(self, r: int, h: RemoteHit, target: str | None) -> None:
        """A hit the merge and the web page can use: a wrong type raised deep in the merge (a
        500), and a NaN score (Python's json reads one) scrambled the merged order."""
        def bad(field: str, why: str) -> CollectionError:
            return CollectionError(f"shard {self.url}: /api/search results[{r}].{field}: {why}; "
                                   "is it an `xmodal serve`?")
        try:  # json reads an integer of any length: float() of one past 1e308 overflows
            finite = (not isinstance(h.score, bool) and isinstance(h.score, (int, float))
                      and bool(np.isfinite(float(h.score))))
        except OverflowError:
            finite = False
        if not finite:
            raise bad("score", f"not a finite number ({reprlib.repr(h.score)})")
        if isinstance(h.id, bool) or not isinstance(h.id, int):
            raise bad("id", f"not an integer ({h.id!r})")
        if h.modality not in ("image", "text"):
            raise bad("modality", f"not image or text ({h.modality!r})")
        if target is not None and h.modality != target:
            raise bad("modality", f"{h.modality} hits for {'an' if target == 'image' else 'a'} {target} search")
        if not isinstance(h.key, str):
            raise bad("key", f"not a string ({h.key!r})")
        h.score = float(h.score)
        if h.pair_id is not None and (isinstance(h.pair_id, bool) or not isinstance(h.pair_id, int)):
            raise bad("pair_id", f"not an integer ({h.pair_id!r})")
        if not isinstance(h.labels, list) or not all(isinstance(x, str) for x in h.labels):
            raise bad("labels", "not a list of strings")
        for field in ("path", "text", "caption"):
            if getattr(h, field) is not None and not isinstance(getattr(h, field), str):
                raise bad(field, f"not a string ({getattr(h, field)!r})")


def _labels_by_target(info: dict[str, Any]) -> dict[str, set[str]] | None:
    """A server's ``/api/info`` ``labels_by_target`` as sets per modality; None where it sends
    none or a malformed one (an older server: its ``labels`` count for either modality)."""
    by = info.get("labels_by_target")
    if not isinstance(by, dict) or not all(isinstance(by.get(m, []), list) and all(
            isinstance(lab, str) for lab in by.get(m, [])) for m in ("image", "text")):
        return None
    return {m: set(by.get(m, [])) for m in ("image", "text")}


class UnknownLabelError(CollectionError):
    """Labels asked for that no item has (on any shard): a typo would otherwise answer
    nothing, silently. ``unknown``: those labels; ``known``: the labels there are. With a
    search's ``target`` modality, only items of that modality count (a label only the other
    modality carries filters every hit away just as well); ``elsewhere``: the unknown labels
    that items of the other modality have."""

    def __init__(self, where: str, unknown: Sequence[str], known: Iterable[str], show: int = 30,
                 target: str | None = None, elsewhere: Sequence[str] = ()) -> None:
        self.unknown, self.known = list(unknown), sorted(known)
        self.target, self.elsewhere = target, list(elsewhere)
        shown = ", ".join(self.known[:show]) + (f", ... ({len(self.known)} in all)"
                                                if len(self.known) > show else "")
        asked = ", ".join(map(repr, self.unknown))
        if target is None:
            super().__init__(f"{where}: no item has the label {asked}; labels here: {shown or 'none'}")
            return
        other = "text" if target == "image" else "image"
        note = ""
        if self.elsewhere:
            note = (f" ({other} items do)" if self.elsewhere == self.unknown else
                    f" ({', '.join(map(repr, self.elsewhere))}: on {other} items only)")
        super().__init__(f"{where}: no {target} item has the label {asked}{note}; "
                         f"{target} labels here: {shown or 'none'}")


def _labels_of(coll: Collection, labels: Sequence[str] | None = None,
               target: str | None = None) -> set[str]:
    """The labels ``coll``'s items (of the ``target`` modality, if given) have: all of them, or
    those of ``labels`` (an indexed lookup)."""
    if labels is not None:
        want = sorted(set(labels))
        if not want:
            return set()
    where, args = [], []
    if labels is not None:
        where.append(f"l.label IN ({','.join('?' * len(want))})")
        args += want
    if target is not None:
        where.append("i.modality = ?")
        args.append(target)
    sql = "SELECT DISTINCT l.label FROM item_labels l"
    if target is not None:
        sql += " JOIN items i ON i.id = l.item_id"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return {r[0] for r in coll.store.query(sql, args)}


def check_labels(source: "Collection | RemoteShard | ShardedCollection", labels: Sequence[str] | None,
                 where: str | None = None, show: int = 30, target: str | None = None) -> None:
    """Raise :class:`UnknownLabelError` (naming ``where``, default the collection or "the
    shards") if any of ``labels`` is on no item (of the search's ``target`` modality, when
    given); with shards, on no shard. A remote shard that cannot be asked might hold it: then
    nothing is raised (its search fails on its own)."""
    if isinstance(source, ShardedCollection):
        return source.check_labels(labels, where, show, target)
    return ShardedCollection.check_labels_of([source], labels, where or _name(source), show, target)


class ShardHits(list):
    """The merged hits, plus ``failed``: ``(shard name, error)`` of the shards skipped with
    ``on_error="skip"`` (the answer then covers the other shards only)."""

    def __init__(self, hits: Sequence[Hit] = (), failed: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(hits)
        self.failed = list(failed)


class ShardedCollection:
    """Local :class:`Collection` objects and :class:`RemoteShard` servers searched as one.

    Queries are encoded by the first local shard (its method and encoders); with only remote
    shards, text queries are sent as text and each server encodes them. Results are
    :class:`Hit` objects whose ``shard`` attribute names their shard (ids are per shard; a
    shard named ``""`` leaves it None: the "home" collection of a routing server). A shard
    that fails raises :class:`CollectionError`, or with ``on_error="skip"`` is left out and
    named in the result's ``failed`` list.
    """

    def __init__(self, shards: Sequence[Collection | RemoteShard], names: Sequence[str] | None = None,
                 max_workers: int = 8) -> None:
        if not shards:
            raise CollectionError("ShardedCollection: no shards given")
        self.shards = list(shards)
        self.names = list(names) if names is not None else [_name(s) for s in self.shards]
        if len(self.names) != len(self.shards):
            raise CollectionError("ShardedCollection: one name per shard")
        n_local = sum(isinstance(s, Collection) for s in self.shards)
        # One pool for the local shards and one per remote shard: a hung or trickling server
        # occupies its own workers only, so neither local searches nor healthy remote shards
        # queue behind its calls. Remote calls are waited for at most their shard's timeout.
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(max_workers, n_local)))
        self._remote_pools = {id(s): ThreadPoolExecutor(max_workers=4) for s in self.shards
                              if not isinstance(s, Collection)}
        self._owned: list[Collection] = []  # opened by open_shards: closed with this
        try:
            self._check_compatible()
        except BaseException:
            self.close()
            raise
        self.local = next((s for s in self.shards if isinstance(s, Collection)), None)

    def _check_compatible(self) -> None:
        """Every shard must share the first one's common space: otherwise scores mean
        different things and merging them ranks noise. Binary shards re-rank by float
        projections only when every one keeps them (``rerank``): a shard without them answers
        by Hamming (1 - 2h/bits), a scale the others' cosines do not share."""
        first = self.shards[0].stats()
        self.rerank = bool(first.get("rerank"))
        some = self.rerank  # some shard keeps float projections (told not to use them if not all do)
        seen = {_identity(first): self.names[0]}
        for name, shard in zip(self.names[1:], self.shards[1:]):
            st = shard.stats()
            self.rerank = self.rerank and bool(st.get("rerank"))
            some = some or bool(st.get("rerank"))
            same = _identity(st)
            if same is not None and same in seen:
                earlier = seen[same] or "this server's own collection"
                raise CollectionError(
                    f"shards {earlier} and {name} are one collection (the same "
                    f"database at the same generation with the same items: served twice, or a copy); "
                    f"its hits would be counted twice: give it once")
            seen[same] = name
            if st.get("space") == first.get("space") and first.get("space"):
                continue
            what = [f"{k} {st.get(k)!r} vs {first.get(k)!r}" for k in ("output", "dim", "method", "encoders")
                    if st.get(k) != first.get(k)]
            raise CollectionError(
                f"shard {name} does not share the common space of shard {self.names[0]} "
                f"({'; '.join(what) or 'a differently fitted method or encoder'}); make every shard "
                f"of one space: xmodal index SOURCE -c NEW --like {self.names[0]}")
        self._mixed_rerank = some and not self.rerank

    def check_labels(self, labels: Sequence[str] | None, where: str | None = None, show: int = 30,
                     target: str | None = None) -> None:
        """:func:`check_labels` over every shard: a label counts as known if any shard has it
        (on an item of the ``target`` modality, when given)."""
        self.check_labels_of(self.shards, labels, where or "the shards", show, target)

    @staticmethod
    def check_labels_of(shards: Sequence[Collection | RemoteShard], labels: Sequence[str] | None,
                        where: str, show: int = 30, target: str | None = None) -> None:
        if target is not None and target not in ("image", "text"):
            raise ValueError(f"target must be 'image' or 'text', got {target!r}")
        # as stored: an item's labels are kept as text, so a filter of 3 means the label '3'
        labels = [str(lab) for lab in labels or ()]
        missing = set(labels)
        # local shards first (an indexed lookup), then what remote shards were seen to have;
        # only a label still missing costs a call to each remote shard's /api/info
        for shard in shards:
            if missing and isinstance(shard, Collection):
                missing -= _labels_of(shard, sorted(missing), target)
        for shard in shards:
            if missing and isinstance(shard, RemoteShard):
                missing -= shard.labels_seen(target)
        if not missing:
            return
        known: set[str] = set()
        anywhere: set[str] = set()  # on items of either modality: named as on the other one
        for shard in shards:
            if isinstance(shard, Collection):
                known |= _labels_of(shard, None, target)
                anywhere |= _labels_of(shard) if target is not None else set()
            else:
                try:
                    shard.stats()
                except CollectionError:
                    return  # it may have them: its search reports its failure
                known |= shard.labels_seen(target, fresh=True)
                anywhere |= shard.labels_seen(None, fresh=True)
        unknown = [lab for lab in dict.fromkeys(labels) if lab not in known]
        if unknown:
            raise UnknownLabelError(where, unknown, known, show, target,
                                    [lab for lab in unknown if lab in anywhere])

    @property
    def space(self) -> str | None:
        """The space queries are encoded in: the first local shard's (as it is now: it may
        have been rebuilt), else the first shard's."""
        first = self.local if self.local is not None else self.shards[0]
        if isinstance(first, Collection):
            first.refresh()
        return first.space

    def close(self) -> None:
        """Stop the worker pools, close the remote shards' connections, and close the
        collections :func:`open_shards` opened (ones passed in stay open: they are the caller's)."""
        self._pool.shutdown(wait=False)
        for pool in self._remote_pools.values():
            pool.shutdown(wait=False, cancel_futures=True)
        for shard in self.shards:
            if isinstance(shard, RemoteShard):  # its kept connections (reopened if used again)
                shard.close()
        for coll in self._owned:
            coll.close()
        self._owned = []

    def __enter__(self) -> "ShardedCollection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        per = [s.stats() for s in self.shards]
        return {"shards": [{"name": n, **{k: p.get(k) for k in ("images", "texts", "index")}}
                           for n, p in zip(self.names, per)],
                "images": sum(p["images"] for p in per), "texts": sum(p["texts"] for p in per),
                "labels": sorted(set().union(*(p.get("labels") or () for p in per))),
                # a shard without labels_by_target (an older server) or with a malformed one: its
                # labels on either modality
                "labels_by_target": {m: sorted(set().union(*(
                    by[m] if by is not None else set(p.get("labels") or ())
                    for by, p in ((_labels_by_target(p), p) for p in per)))) for m in ("image", "text")},
                **{k: per[0].get(k) for k in ("output", "dim", "method", "encoders", "space")}}

    # ------------------------------------------------------------ search
    def search_vector(self, vector: np.ndarray, target: str = "image", k: int = 10, *,
                      labels: Sequence[str] | None = None, exact: bool = False,
                      distinct: bool = False, fq: np.ndarray | None = None,
                      on_error: str = "raise", check_labels: bool = True) -> ShardHits:
        """Top ``k`` of the union for one common-space vector (packed code for binary spaces).
        Binary shards re-rank by the float query ``fq`` (sent to remote ones as ``fvector``)
        when every shard keeps float projections; else every one answers by Hamming.
        A label in ``labels`` that no shard has on a ``target`` item is refused (:meth:`check_labels`) unless
        ``check_labels`` is False."""
        if check_labels:
            self.check_labels(labels, target=target)
        v = np.asarray(vector).reshape(-1)
        space = self.space
        if not self.rerank:  # one scale for every shard's scores: Hamming
            fq = None
        floats = {} if fq is None else {"fvector": np.asarray(fq, dtype=np.float32).reshape(-1).tolist()}
        # Each shard checks the space on every query, not only at the start: a shard rebuilt
        # into another space meanwhile would rank noise among the others' hits.
        body = _request(target, k, labels, exact, distinct, vector=v.tolist(), space=space, **floats)

        def one(shard):
            if isinstance(shard, Collection):
                shard.refresh()
                if shard.space != space:
                    raise CollectionError(f"shard {_name(shard)}: its common space is now {shard.space}, "
                                          f"not {space} (rebuilt?); left out")
                # a label on another shard only is no error here: checked across shards above
                return shard.search_vector(v, target, k, labels=labels, exact=exact, fq=fq,
                                           rerank=RERANK_FACTOR if fq is not None else 0, distinct=distinct,
                                           check_labels=False)
            return shard.search(body)

        return self._fan_out(one, k, distinct and target == "text", on_error)

    def _labels_checked(self, kw: dict[str, Any], target: str) -> dict[str, Any]:
        """``kw`` with its label filter checked across the shards (unless ``check_labels`` is
        False) and marked checked, once, before any query is encoded (as a Collection does)."""
        if kw.pop("check_labels", True):
            self.check_labels(kw.get("labels"), target=target)
        return {**kw, "check_labels": False}

    def search_text(self, text: str, k: int = 10, target: str = "image", **kw: Any) -> ShardHits:
        kw = self._labels_checked(kw, target)
        if self.local is None:
            # each shard encodes the text itself: one that keeps float projections would re-rank
            # by cosine beside another's Hamming scores (sent only then: an older server refuses it)
            hamming = {"rerank": False} if self._mixed_rerank else {}
            body = _request(target, k, kw.get("labels"), kw.get("exact"), kw.get("distinct"), text=text,
                            space=self.space, **hamming)
            return self._fan_out(lambda s: s.search(body), k, bool(kw.get("distinct")) and target == "text",
                                 kw.get("on_error", "raise"))
        q, fq = self.local.encode_query_text(text)
        return self.search_vector(q, target, k, fq=fq, **kw)

    def search_image(self, path: str | Path, k: int = 10, target: str = "text", **kw: Any) -> ShardHits:
        if self.local is None:
            raise CollectionError("an image query needs a local shard (its encoders) to encode it; "
                                  "add one collection on this machine")
        kw = self._labels_checked(kw, target)  # before the image is encoded
        q, fq = self.local.encode_query_image(path)
        return self.search_vector(q, target, k, fq=fq, **kw)

    def search_texts(self, texts: Sequence[str], k: int = 10, target: str = "image",
                     **kw: Any) -> list[ShardHits]:
        """Many text queries, one after the other (each fans out to every shard)."""
        kw = self._labels_checked(kw, target)  # once for the batch
        return [self.search_text(t, k, target, **kw) for t in texts]

    def search_images(self, paths: Sequence[str | Path], k: int = 10, target: str = "text",
                      **kw: Any) -> list[ShardHits]:
        kw = self._labels_checked(kw, target)  # once for the batch
        return [self.search_image(p, k, target, **kw) for p in paths]

    def _fan_out(self, fn, k: int, distinct: bool, on_error: str) -> ShardHits:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        start = time.monotonic()
        futures = [(self._pool if isinstance(s, Collection) else self._remote_pools[id(s)]).submit(fn, s)
                   for s in self.shards]
        per_shard, failed = [], []
        for name, shard, fut in zip(self.names, self.shards, futures):
            try:
                if isinstance(shard, RemoteShard):
                    # its whole answer within its timeout, however long it waited for a worker
                    wait = max(0.0, shard.timeout - (time.monotonic() - start))
                    try:
                        per_shard.append(fut.result(timeout=wait))
                    except FutureTimeout:
                        fut.cancel()
                        raise CollectionError(f"shard {shard.url}: timed out after {shard.timeout:g} s") from None
                else:
                    per_shard.append(fut.result())
            except CollectionError as exc:
                if on_error == "raise":
                    raise
                per_shard.append([])
                failed.append((name, str(exc)))
        return ShardHits(self._merge(per_shard, k, distinct), failed)

    def _merge(self, per_shard: list[list[Hit]], k: int, distinct: bool) -> list[Hit]:
        tagged = []
        for order, (name, hits) in enumerate(zip(self.names, per_shard)):
            for rank, h in enumerate(hits):
                h.shard = name or None
                tagged.append((-h.score, order, rank, h))
        tagged.sort(key=lambda t: t[:3])  # score, then shard order: deterministic ties
        out, seen = [], set()
        for *_, h in tagged:
            if distinct:
                if h.text in seen:
                    continue
                seen.add(h.text)
            out.append(h)
            if len(out) == k:
                break
        return out



def _error_words(body: str) -> str:
    """An error answer in a few words: an `xmodal serve`'s JSON ``detail``, else (another web
    server's page, HTML and all) its first 200 characters and the likely cause."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError, RecursionError):
        detail = None
    if isinstance(detail, str):
        return detail
    short = " ".join(body.split())
    short = short[:200] + ("..." if len(short) > 200 else "")
    return f"not an xmodal answer; is it an `xmodal serve`? (got {short!r})"


def _request(target: str, k: int, labels: Sequence[str] | None, exact: Any, distinct: Any,
             **query: Any) -> dict[str, Any]:
    """The body of ``POST /api/search`` (``query``: ``vector=`` or ``text=``)."""
    # check_labels false: a label on another shard only is no error here (the caller checks
    # that some shard has it). local_only: a shard that routes to shards of its own answers
    # from its own collection (else a shard both reach answers twice, its hits tagged with the
    # wrong server, and a cycle of routers recurses).
    return {**query, "target": target, "k": int(k), "labels": list(labels or []),
            "exact": bool(exact), "distinct": bool(distinct), "check_labels": False, "local_only": True}


def _identity(st: dict[str, Any]) -> tuple | None:
    """What tells one collection from another, from its ``stats()`` (or ``/api/info``): its
    database id (a copy keeps it), write generation and item counts; None when unknown (an
    older collection or server)."""
    db_id = st.get("db_id")
    if not db_id:
        return None
    return (db_id, st.get("generation"), st.get("images"), st.get("texts"))


def _name(shard: Collection | RemoteShard) -> str:
    return shard.url if isinstance(shard, RemoteShard) else str(shard.path)


def shard_keys(urls: Sequence[str], keys: str | Sequence[str] | Mapping[str, str] | None,
               option: str = "api_key") -> list[str | None]:
    """The API key sent to each of ``urls``. ``keys``: one key for every shard, or ``URL=KEY``
    entries (strings, or a mapping), one per private shard: keys belong to one collection, so
    two private shards need a key each, and neither should be sent the other's. A plain key
    beside ``URL=KEY`` entries goes to the shards they do not name. ``option`` names where
    the keys came from in errors."""
    if keys is None:
        return [None] * len(urls)
    if isinstance(keys, str):
        keys = [keys]
    pairs = list(keys.items()) if isinstance(keys, Mapping) else []
    plain: list[str] = []
    if not isinstance(keys, Mapping):
        for entry in keys:
            url, sep, key = entry.rpartition("=")
            if sep and urllib.parse.urlparse(url).scheme in ("http", "https"):
                pairs.append((url, key))
            elif entry:
                plain.append(entry)
    if len(plain) > 1:
        raise CollectionError(f"{option}: {len(plain)} keys without a shard URL; give one KEY for every "
                              "shard, or URL=KEY for each private shard")
    wanted = {u.rstrip("/"): u for u in urls}
    per: dict[str, str] = {}
    for url, key in pairs:
        if url.rstrip("/") not in wanted:
            raise CollectionError(f"{option}: {url}=... names no shard given (shards: "
                                  f"{', '.join(urls) or 'none'})")
        per[url.rstrip("/")] = key
    return [per.get(u.rstrip("/"), plain[0] if plain else None) for u in urls]


def open_shards(collections: Sequence[str | Path] = (), urls: Sequence[str] = (),
                api_key: str | Sequence[str] | Mapping[str, str] | None = None,
                timeout: float = 30.0) -> ShardedCollection:
    """Local collection paths and ``xmodal serve`` URLs as one :class:`ShardedCollection`;
    a server has ``timeout`` seconds to answer a query. ``api_key``: one key for every server,
    or one per server (``{url: key}`` or ``"URL=KEY"`` strings; :func:`shard_keys`). Its
    ``close()`` (or the end of a ``with`` block) closes the collections opened here."""
    keys = shard_keys(urls, api_key)
    local: list[Collection] = []
    try:
        for p in collections:
            local.append(Collection.open(p))
        sc = ShardedCollection([*local, *(RemoteShard(u, api_key=key, timeout=timeout)
                                          for u, key in zip(urls, keys))])
    except BaseException:  # a shard down or of another space: nothing left open
        for coll in local:
            coll.close()
        raise
    sc._owned = local  # closed with it
    return sc
