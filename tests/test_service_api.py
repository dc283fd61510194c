"""The HTTP API as an integrator sees it: the OpenAPI schema (every operation described, typed
answers, the errors it really returns), answers that match the schema, pagination, HEAD,
trailing slashes and Unicode labels. A small collection of Wikipedia articles (bag-of-words
text encoder, each article's image stored at its text's vector): no image encoding."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import DATA, need
from xmodal.index.collection import Collection, TextItem
from xmodal.service import create_app
from xmodal.service.auth import create_key

N = 24  # Wikipedia test articles


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    need("wikipedia")
    from xmodal.data import load_wikipedia
    from xmodal.encoders import get_encoder

    ds = load_wikipedia(str(DATA)).subset("test")
    cats = (DATA / "wikipedia" / "categories.list").read_text().split()
    texts = [ds.texts[i][:500] for i in range(N)]
    # a label per category, and non-ASCII ones for the Unicode checks
    labels = [[cats[int(np.argmax(ds.labels[i]))] if ds.labels.ndim > 1 else cats[int(ds.labels[i]) - 1]]
              for i in range(N)]
    labels[0] = labels[0] + ["café"]
    labels[1] = labels[1] + ["地理"]
    enc = get_encoder("bow", "text").fit(texts, progress=False)
    coll = Collection.create(tmp_path_factory.mktemp("api") / "c.xmc", dim=enc.dim, text_encoder=enc)
    coll.add_vectors("image", [f"wiki/{i}.jpg" for i in range(N)], enc.encode(texts, progress=False),
                     labels=labels)
    coll.add_items(texts=[TextItem(f"wiki/{i}.jpg#0", t, pair_key=f"wiki/{i}.jpg", labels=labels[i])
                          for i, t in enumerate(texts)], progress=False)
    keys = {r: create_key(coll, r, f"api {r}") for r in ("read", "write", "admin")}
    client = TestClient(create_app(coll), raise_server_exceptions=False)
    yield {"coll": coll, "c": client, "keys": keys, "spec": client.get("/openapi.json").json(), "enc": enc,
           "texts": texts}
    coll.close()


def hdr(api, role):
    return {"X-API-Key": api["keys"][role]}


def operations(spec):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield path, method, op


# ------------------------------------------------------------------ a small JSON-schema check
def resolve(spec, schema):
    while "$ref" in schema:
        name = schema["$ref"].split("/")[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def check(spec, schema, value, where="body"):
    """Raise AssertionError where ``value`` does not fit ``schema`` (an OpenAPI 3.1 subset):
    a field the schema does not declare counts as a mismatch unless it allows others."""
    schema = resolve(spec, schema)
    if "anyOf" in schema or "oneOf" in schema:
        errors = []
        for alt in schema.get("anyOf", schema.get("oneOf")):
            try:
                return check(spec, alt, value, where)
            except AssertionError as exc:
                errors.append(str(exc))
        raise AssertionError(f"{where}: {value!r} fits no alternative: {errors}")
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if "const" in schema:
        assert value == schema["const"], f"{where}: {value!r} != {schema['const']!r}"
    t = schema.get("type")
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    if t == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is no integer"
    elif t == "number":
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), \
            f"{where}: {value!r} is no finite number"
    elif t is not None:
        assert isinstance(value, types[t]), f"{where}: {value!r} is no {t}"
    if t == "object" or "properties" in schema:
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{where}: required field {name!r} missing"
        extra = schema.get("additionalProperties")
        for name, v in value.items():
            if name in props:
                check(spec, props[name], v, f"{where}.{name}")
            elif isinstance(extra, dict):
                check(spec, extra, v, f"{where}.{name}")
            else:
                assert extra is True, f"{where}: field {name!r} is not in the schema"
    if t == "array":
        for i, v in enumerate(value):
            check(spec, schema.get("items", {}), v, f"{where}[{i}]")


def documented(spec, path, method, status, body):
    """``body`` checked against the schema the OpenAPI document gives for that answer."""
    responses = spec["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered {status}, not documented"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    check(spec, schema, body)


# ------------------------------------------------------------------ the schema itself
def test_every_operation_has_a_summary_a_description_and_a_typed_answer(api):
    bare = []
    for path, method, op in operations(api["spec"]):
        assert op.get("summary") and op.get("description"), f"{method.upper()} {path}: no summary/description"
        ok = [s for s in op["responses"] if s.startswith("2")]
        assert ok, f"{method.upper()} {path}: no success answer documented"
        for s in ok:
            content = op["responses"][s].get("content", {})
            if "application/json" in content:
                schema = content["application/json"]["schema"]
                if "$ref" not in schema:
                    bare.append(f"{method.upper()} {path} {s}: {schema}")
            elif not ({"image/jpeg", "text/plain"} & set(content)):
                bare.append(f"{method.upper()} {path} {s}: no content type")
    assert not bare, "answers without a model:\n" + "\n".join(bare)


def test_the_errors_each_route_returns_are_listed(api):
    spec = api["spec"]
    errors = {(p, m): set(op["responses"]) for p, m, op in operations(spec)}
    guarded = [(p, m) for p, m, _ in operations(spec) if p.startswith("/api/") or p == "/metrics"]
    for route in guarded:
        assert {"401", "403"} <= errors[route], route
    for p, m in guarded:
        if p.startswith("/api/") and not p.endswith("/thumbnail"):
            assert "429" in errors[(p, m)], (p, m)
    expect = {("/api/search", "post"): {"404", "409", "413", "422"},
              ("/api/search", "get"): {"422"},
              ("/api/search/batch", "post"): {"413", "422"},
              ("/api/search/image", "post"): {"400", "413", "415", "422"},
              ("/api/items", "post"): {"400", "413", "415", "422"},
              ("/api/items/{item_id}", "get"): {"404", "422"},
              ("/api/items/{item_id}", "delete"): {"404"},
              ("/api/items/{item_id}/thumbnail", "get"): {"404", "422"},
              ("/api/shards/{shard}/items/{item_id}/thumbnail", "get"): {"404", "502"},
              ("/api/texts", "post"): {"400", "404", "413", "422"},
              ("/api/keys/{key_id}", "delete"): {"404"}}
    for route, codes in expect.items():
        assert codes <= errors[route], (route, codes - errors[route])
    # the writes a read-only collection refuses say so
    assert "read-only" in spec["paths"]["/api/texts"]["post"]["responses"]["403"]["description"]


def test_a_422_documents_both_of_its_shapes(api):
    """The app's own 422s carry a string detail (``q: blank``), FastAPI's a list: the schema
    must allow both, or a generated client fails to parse half of them."""
    spec, c = api["spec"], api["c"]
    own = c.get("/api/search", params={"q": "   "})
    theirs = c.get("/api/search", params={"q": "river", "k": 0})
    assert own.status_code == theirs.status_code == 422
    assert isinstance(own.json()["detail"], str) and isinstance(theirs.json()["detail"], list)
    documented(spec, "/api/search", "get", 422, own.json())
    documented(spec, "/api/search", "get", 422, theirs.json())
    assert theirs.json()["detail"][0]["loc"] == ["query", "k"]


@pytest.mark.parametrize("route, body, field", [
    ("/api/search", {"text": "river", "top_k": 3}, "top_k"),
    ("/api/search/batch", {"texts": ["river"], "lables": ["art"]}, "lables"),
])
def test_a_misspelt_body_field_is_named_not_ignored(api, route, body, field):
    """``top_k`` for ``k`` used to run the search with k=10 in silence."""
    res = api["c"].post(route, json=body)
    assert res.status_code == 422, res.text
    (issue,) = res.json()["detail"]
    assert issue["loc"] == ["body", field] and "not permitted" in issue["msg"]
    assert api["c"].post(route, json={k: v for k, v in body.items() if k != field}).status_code == 200


def test_parameter_constraints_are_in_the_schema(api):
    spec = api["spec"]
    params = {(p, m): {q["name"]: q["schema"] for q in op.get("parameters", [])}
              for p, m, op in operations(spec)}
    k = params[("/api/search", "get")]["k"]
    assert (k["minimum"], k["maximum"]) == (1, 1000)
    body_k = resolve(spec, {"$ref": "#/components/schemas/SearchRequest"})["properties"]["k"]
    assert (body_k["minimum"], body_k["maximum"]) == (1, 1000)
    items = params[("/api/items", "get")]
    assert items["offset"]["minimum"] == 0 and (items["limit"]["minimum"], items["limit"]["maximum"]) == (1, 1000)
    audit = params[("/api/audit", "get")]
    assert audit["offset"]["minimum"] == 0 and audit["limit"]["maximum"] == 10000
    for route in ("/api/items/{item_id}/thumbnail", "/api/shards/{shard}/items/{item_id}/thumbnail"):
        assert params[(route, "get")]["size"]["enum"] == [128, 256, 512]
        jpeg = spec["paths"][route]["get"]["responses"]["200"]["content"]["image/jpeg"]
        assert jpeg["schema"] == {"type": "string", "format": "binary"}  # a generated client reads bytes


# ------------------------------------------------------------------ answers match the schema
def test_answers_match_the_documented_models(api):
    spec, c, coll = api["spec"], api["c"], api["coll"]
    a, w = hdr(api, "admin"), hdr(api, "write")
    one = coll.list_items("image", limit=1)[0].id
    cases = [
        ("get", "/health", c.get("/health"), 200),
        ("get", "/api/info", c.get("/api/info"), 200),
        ("get", "/api/search", c.get("/api/search", params={"q": "war and music", "k": 3}), 200),
        ("post", "/api/search", c.post("/api/search", json={"item_id": one, "k": 2, "relevant": [one]}), 200),
        ("post", "/api/search", c.post("/api/search", json={"item_id": 10 ** 9}), 404),
        ("post", "/api/search", c.post("/api/search", json={"item_id": one, "space": "other"}), 409),
        ("post", "/api/search/batch", c.post("/api/search/batch", json={"texts": ["art", "sport"], "k": 2}), 200),
        ("get", "/api/items", c.get("/api/items", params={"limit": 3}), 200),
        ("get", "/api/items/{item_id}", c.get(f"/api/items/{one}"), 200),
        ("get", "/api/items/{item_id}", c.get("/api/items/999999"), 404),
        ("get", "/api/keys", c.get("/api/keys", headers=a), 200),
        ("get", "/api/keys", c.get("/api/keys"), 401),
        ("get", "/api/keys", c.get("/api/keys", headers=w), 403),
        ("post", "/api/keys", c.post("/api/keys", json={"role": "read", "name": "schema"}, headers=a), 201),
        ("delete", "/api/keys/{key_id}", c.delete("/api/keys/nosuch", headers=a), 404),
        ("get", "/api/audit", c.get("/api/audit", params={"limit": 2}, headers=a), 200),
        ("put", "/api/settings", c.put("/api/settings", json={"public_read": True}, headers=a), 200),
    ]
    made = c.post("/api/texts", json={"text": "a schema check", "key": "schema/t"}, headers=w)
    again = c.post("/api/texts", json={"text": "a schema check", "key": "schema/t"}, headers=w)
    cases += [("post", "/api/texts", made, 201), ("post", "/api/texts", again, 200),
              ("delete", "/api/items/{item_id}", c.delete(f"/api/items/{made.json()['id']}", headers=w), 200)]
    new_key = [r for m, p, r, s in cases if p == "/api/keys" and m == "post"][0].json()
    cases.append(("delete", "/api/keys/{key_id}", c.delete(f"/api/keys/{new_key['key_id']}", headers=a), 200))
    for method, path, r, status in cases:
        assert r.status_code == status, (method, path, r.status_code, r.text)
        documented(spec, path, method, status, r.json())


def test_add_and_revoke_answers_carry_what_the_cli_prints(api):
    """`xmodal keys add --json` prints {key_id, role, name, token}, `keys revoke --json`
    {key_id, revoked}: the API's answers carry the same fields (its older ones kept)."""
    c, a = api["c"], hdr(api, "admin")
    made = c.post("/api/keys", json={"role": "read", "name": "clé de lecture"}, headers=a).json()
    assert made["name"] == "clé de lecture" and made["role"] == "read" and made["token"].startswith("xmk_")
    gone = c.delete(f"/api/keys/{made['key_id']}", headers=a).json()
    assert gone["key_id"] == made["key_id"] and gone["revoked"] == made["key_id"]  # old field kept


# ------------------------------------------------------------------ pagination
def test_items_pages_say_where_they_are_and_how_many_there_are(api):
    c, coll = api["c"], api["coll"]
    first = c.get("/api/items", params={"modality": "text", "limit": 5}).json()
    assert (first["offset"], first["limit"], first["total"]) == (0, 5, coll.count("text"))
    seen, offset = [], 0
    while offset < first["total"]:
        page = c.get("/api/items", params={"modality": "text", "limit": 7, "offset": offset}).json()
        seen += [it["id"] for it in page["items"]]
        offset += page["limit"]
    assert seen == [h.id for h in coll.list_items("text", limit=1000)]
    assert c.get("/api/items", params={"limit": 1001}).status_code == 422
    assert c.get("/api/items", params={"offset": -1}).json()["detail"][0]["loc"] == ["query", "offset"]


def test_audit_pages_with_an_offset(api):
    c, a = api["c"], hdr(api, "admin")
    whole = c.get("/api/audit", params={"limit": 10000}, headers=a).json()
    assert whole["total"] == len(whole["entries"]) >= 3 and whole["offset"] == 0
    page = c.get("/api/audit", params={"limit": 2, "offset": 1}, headers=a).json()
    assert [e["id"] for e in page["entries"]] == [e["id"] for e in whole["entries"][1:3]]
    assert (page["offset"], page["limit"], page["total"]) == (1, 2, whole["total"])


# ------------------------------------------------------------------ HTTP details
def test_head_answers_as_get_without_a_body(api):
    c = api["c"]
    for url in ("/health", "/api/info", "/api/items/1", "/"):
        g, h = c.get(url), c.head(url)
        assert h.status_code == g.status_code == 200, url
        assert h.content == b"" and h.headers["content-type"] == g.headers["content-type"], url
    assert c.head("/api/items/999999").status_code == 404
    assert c.head("/api/search").status_code == 422  # q missing, as for GET
    assert c.request("HEAD", "/api/texts").status_code == 405  # a POST-only route


def test_a_trailing_slash_is_the_same_route_not_a_redirect(api):
    """A redirect (307 to an absolute http:// URL) is not followed by httpx by default and
    names the wrong scheme behind a TLS proxy: the route answers itself."""
    c = api["c"]
    r = c.get("/api/search/", params={"q": "music", "k": 2}, follow_redirects=False)
    assert r.status_code == 200 and len(r.json()["results"]) == 2
    r = c.post("/api/search/", json={"text": "music", "k": 2}, follow_redirects=False)
    assert r.status_code == 200
    assert c.get("/api/items/", follow_redirects=False).status_code == 200
    assert c.get("/static/app.js", follow_redirects=False).status_code == 200
    assert c.get("/", follow_redirects=False).status_code == 200


def test_unicode_labels_filter_and_come_back_as_sent(api):
    c = api["c"]
    for label in ("café", "地理"):
        r = c.get("/api/search", params={"q": "history", "labels": label, "target": "image"})
        assert r.status_code == 200, r.text
        assert r.json()["results"] and all(label in h["labels"] for h in r.json()["results"])
    assert "地理" in c.get("/api/info").json()["labels_by_target"]["image"]


def test_a_k_over_the_collection_returns_every_item_once(api):
    c, coll = api["c"], api["coll"]
    r = c.post("/api/search", json={"text": "art", "k": 1000, "target": "text"}).json()
    ids = [h["id"] for h in r["results"]]
    assert r["k"] == 1000 and len(ids) == len(set(ids)) == coll.count("text")
    assert all(math.isfinite(h["score"]) for h in r["results"])


def test_no_answer_carries_nan_or_infinity(api, monkeypatch):
    """JSON has no NaN: a listed item's score (NaN: no query) is null, and any other
    non-finite number an answer might hold is null too, never a 500 or invalid JSON."""
    import json

    c, coll = api["c"], api["coll"]
    r = c.get("/api/items", params={"limit": 2})
    assert r.status_code == 200 and [it["score"] for it in r.json()["items"]] == [None, None]
    real = coll.stats
    monkeypatch.setattr(coll, "stats", lambda: {**real(), "odd": [float("nan"), float("inf")]})
    r = c.get("/api/info")
    assert r.status_code == 200 and json.loads(r.text, parse_constant=lambda x: 1 / 0)["odd"] == [None, None]


def test_head_and_a_trailing_slash_through_uvicorn(api):
    """Through a real server: HEAD's answer has the GET's headers and no body (uvicorn
    reads the method from its own scope), and the metrics count the route."""
    import httpx

    from conftest import serving

    with serving(create_app(api["coll"])) as url:
        g = httpx.get(url + "/api/items/1")
        h = httpx.head(url + "/api/items/1")
        assert h.status_code == 200 and h.content == b"" and h.headers["content-length"] == g.headers["content-length"]
        assert httpx.head(url + "/health").status_code == 200
        assert httpx.get(url + "/api/info/").status_code == 200
        metrics = httpx.get(url + "/metrics").text
        for method, route in (("GET", "/api/items/{item_id}"), ("HEAD", "/api/items/{item_id}"),
                              ("HEAD", "/health"), ("GET", "/api/info")):
            assert f'method="{method}",route="{route}",status="200"}} 1' in metrics, (method, route)


def test_a_json_body_sent_as_text_says_which_content_type_to_send(api):
    """A client that forgets the header (curl -d sends form encoding) sent JSON text that
    FastAPI reads as a string: 'Input should be a valid dictionary' did not say why."""
    c = api["c"]
    for kind in ("text/plain", "application/x-www-form-urlencoded"):
        r = c.post("/api/search", content=b'{"text": "music"}', headers={"content-type": kind})
        assert r.status_code == 422
        err = r.json()["detail"][0]
        assert err["loc"] == ["body"] and "Content-Type: application/json" in err["msg"], err
    r = c.post("/api/search", json=[1, 2])  # JSON, but not an object: no hint about the header
    assert "Content-Type" not in r.json()["detail"][0]["msg"]


def test_a_routing_servers_answers_fit_the_models_too(api, tmp_path):
    """Remote hits carry `shard` and `proxy_thumbnail`, answers `failed_shards`, /api/info
    `shards`: all in the schema."""
    from conftest import serving

    enc, texts = api["enc"], api["texts"]
    with Collection.create(tmp_path / "b.xmc", dim=enc.dim, text_encoder=enc) as other:
        other.add_vectors("image", [f"b/{i}.jpg" for i in range(4)], enc.encode(texts[:4], progress=False),
                          paths=[f"/nowhere/b{i}.jpg" for i in range(4)])
        assert other.space == api["coll"].space
        with serving(create_app(other)) as url:
            router = TestClient(create_app(api["coll"], shards=[url]), raise_server_exceptions=False)
            spec = router.get("/openapi.json").json()
            r = router.get("/api/search", params={"q": texts[0][:200], "k": 60})
            assert r.status_code == 200, r.text
            remote = [h for h in r.json()["results"] if h.get("shard")]
            assert remote and remote[0]["proxy_thumbnail"].startswith("/api/shards/0/")
            assert r.json()["failed_shards"] == []
            documented(spec, "/api/search", "get", 200, r.json())
            info = router.get("/api/info").json()
            assert info["shards"] == [url]
            documented(spec, "/api/info", "get", 200, info)
