"""The JSON the HTTP API takes and answers, as pydantic models, for validation and the OpenAPI schema.

Request models (:class:`SearchRequest`, :class:`BatchSearchRequest`, :class:`TextAdd`,
:class:`KeyCreate`, :class:`Settings`) validate bodies as they arrive. Answer models
(:class:`SearchAnswer`, :class:`ItemsPage`, :class:`AddAnswer`, ... and :class:`ErrorBody`,
every error's body) only describe what the routes send: the routes return plain dicts, and
tests/test_service_api.py checks real answers against these models. :func:`errors`,
:func:`answers` and :func:`add_answers` build a route's OpenAPI ``responses`` from them and
the shared error descriptions (:data:`ERRORS`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from .checks import _no_blanks, _utf8

# ------------------------------------------------------------------------- models
Utf8Str = Annotated[str, AfterValidator(_utf8)]
# a search filter, trimmed as stored labels are (check_labels): "harbour, quay" is two labels
LabelStr = Annotated[str, AfterValidator(_utf8), AfterValidator(str.strip)]


# NaN / Infinity are valid to Python's json and to pydantic's float: refused by field here,
# not as "vectors hold NaN or inf" deep in the search
Finite = Annotated[float, Field(allow_inf_nan=False)]


# a JSON list of filters: blanks dropped, as between two commas of a query string
LabelList = Annotated[list[LabelStr], AfterValidator(_no_blanks)]


class _Body(BaseModel):
    # a misspelt field ("top_k", "lables") answers 422 naming it, instead of a search run
    # with that option silently left at its default
    model_config = ConfigDict(extra="forbid")


class SearchRequest(_Body):
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
    rerank: bool = Field(True, description="false: answer a binary collection by Hamming distance even "
                         "where it keeps float projections (a router sends it when one of its shards "
                         "keeps none, so that every shard's scores are on one scale)")


class BatchSearchRequest(_Body):
    texts: list[Utf8Str] = Field(..., min_length=1, max_length=256, description="text queries, "
                             "encoded in one batch (each 1-2000 characters)")
    target: Literal["image", "text"] | None = Field(None, description="modality of results (default image)")
    k: int = Field(10, ge=1, le=1000)
    labels: LabelList = Field(default_factory=list, description="only items with any of these labels")
    exact: bool = Field(False, description="search the flat exact index")
    distinct: bool = Field(False, description="collapse identical texts into one result")


MAX_TEXT = 10000  # characters in a stored text (an added text, an upload's caption)


class TextAdd(_Body):
    text: Utf8Str = Field(..., min_length=1, max_length=MAX_TEXT)
    key: Utf8Str | None = None
    pair_id: int | None = None
    labels: list[Utf8Str] = Field(default_factory=list)


class KeyCreate(_Body):
    role: Literal["read", "write", "admin"]
    name: Utf8Str = Field("", max_length=200)


class Settings(_Body):
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
    max_upload_bytes: int = Field(..., description="the largest upload body this server takes "
                                  "(--max-upload-mb); a larger one answers 413")
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


# ------------------------------------------------------------------------- route responses
ADD_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"description": "stored: a new item, a changed one replaced (new ids in `ids`), or the same "
                         "item sent with other labels (relabelled in place, its id kept)"},
    200: {"description": "unchanged: the same item, with the same labels, was already stored (sent "
                         "again); nothing written, "
                         "`id` and `item` are the existing item"},
}
JPEG_CONTENT = {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}
ERRORS = {
    400: "the request cannot be used: an empty or broken upload, an image the encoder cannot read, "
         "an add the collection refuses (a key already an item of the other kind)",
    401: "no API key where the route needs one (reading too when public_read is off), an invalid "
         "or revoked key, or a key in the URL (?api_key=)",
    403: "the key's role is too low for the route",
    404: "no such item (or key, or shard)",
    409: "`space` is not this collection's common space",
    413: "request body over --max-upload-mb (uploads) or 4 MiB (JSON); an image over 40 Mpx",
    415: "the upload is not an image in an accepted format",
    422: "a request that does not fit the route: FastAPI's list of issues (loc names the field), or "
         "a message naming the field (`key: item key ...` for a bad item key)",
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
