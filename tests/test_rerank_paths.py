"""A binary collection indexed with float re-ranking (``--rerank``) answers a query the same way
through every path a user can take: Python (``search_text``, ``search_texts``, ``search_vector``,
``search_vectors``, ``search_image(s)``, feedback), the command line (one query, ``--queries``,
``--json``), the HTTP API (``GET``/``POST /api/search``, a vector with its ``fvector``, the batch
route, an image upload, concurrent text queries the server encodes together) and a routing
server over shards of such collections.

The reference answer is computed here, not by the paths under test: the Hamming shortlist of
``4 k`` (its distances checked against every stored code with NumPy) re-scored by the cosine of
the query's float projection against the stored float projections.

Real data: 30 UCM-Captions images and their 150 captions, efficientnet-lite0 and tf-idf
features, a 32-bit CCA-ITQ space (about 10 s to build on one thread).
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import need, serving

TIMES = 4  # the shortlist factor every path uses by default
QUERIES = ["many buildings and green trees", "a river runs through the forest",
           "some cars are parked in the parking lot", "an airplane is stopped at the airport"]


def _folder(root: Path, ds, start: int, step: int) -> Path:
    """Every ``step``-th UCM-Captions image from ``start``, its captions in a sidecar .txt."""
    folder = root / f"imgs{start}"
    folder.mkdir()
    for i in range(start, ds.n_images, step):
        src = Path(ds.image_paths[i])
        shutil.copy(src, folder / src.name)
        (folder / (src.stem + ".txt")).write_text(
            "\n".join(t for t, j in zip(ds.texts, ds.text_to_image) if j == i))
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two collections of one re-ranked 32-bit CCA-ITQ space (the second a ``--like`` shard of
    the first, on other images), their folders and root."""
    from threadpoolctl import threadpool_limits

    from xmodal.data import load_ucm_captions
    from xmodal.index import Collection, build_collection

    ds = load_ucm_captions(str(need("ucm_captions").parent))
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("rerank_paths")
    mp.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "xmodal-cache"))
    import scipy.linalg  # noqa: F401  (before torch: see tests/conftest.py's env)
    import torch  # noqa: F401
    with threadpool_limits(1):
        fa, fb = _folder(root, ds, 0, 70), _folder(root, ds, 35, 70)
        a = build_collection(fa, root / "a.xmc", method="cca_itq", method_params={"bits": 32},
                             image_encoder="efficientnet-lite0", text_encoder="tfidf", rerank=True,
                             quiet=True)
        b = build_collection(fb, root / "b.xmc", like=root / "a.xmc", quiet=True)
        assert a.kind == "binary" and a.fdim and b.fdim and a.space == b.space
        # a shard of the same space without float projections (b's images, their codes only)
        plain = Collection.create(root / "plain.xmc", method=a.method, image_encoder=a.encoder("image"),
                                  text_encoder=a.encoder("text"))
        ids = [h.id for h in b.list_items("image", limit=1000)]
        plain.add_vectors("image", [f"p/{h.key}" for h in b.list_items("image", limit=1000)],
                          b.item_vectors(ids)[0])
        assert plain.space == a.space and not plain.fdim
        yield {"a": a, "b": b, "plain": plain, "root": root, "images": sorted(fa.glob("*.jpg"))}
    for c in (a, b, plain):
        c.close()
    mp.undo()


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1, np.asarray(v).shape[-1])
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Ref:
    """A reference answer: ``ids`` and ``scores`` (the Hamming shortlist of TIMES * k, best k by
    float cosine) and ``cos``, the cosine of every shortlisted item (ties in cosine, common
    among captions repeated word for word, may come in either order)."""

    def __init__(self, ids: list, scores: np.ndarray, cos: dict) -> None:
        self.ids, self.scores, self.cos = ids, scores, cos


def reference(c, q: np.ndarray, fq: np.ndarray, target: str, k: int) -> Ref:
    q = np.asarray(q, dtype=np.uint8).reshape(1, -1)
    _, short = c.search_vectors(q, target, k * TIMES, exact=True, rerank=0)
    short = short[0][short[0] >= 0]
    ids = [h.id for h in c.list_items(target, limit=1000)]
    codes, _ = c.item_vectors(ids)
    ham = np.unpackbits(codes ^ q, axis=1).sum(axis=1)
    mine, fv = c.item_vectors(short.tolist())
    # the shortlist holds the smallest Hamming distances there are (whatever order ties took)
    assert sorted(np.unpackbits(mine ^ q, axis=1).sum(axis=1)) == sorted(ham)[:len(short)]
    cos = _unit(fv) @ _unit(fq)[0]
    best = np.argsort(-cos, kind="stable")[:k]
    return Ref(short[best].tolist(), cos[best], dict(zip(short.tolist(), cos.tolist())))


def same(hits, ref: Ref, atol: float = 1e-5) -> None:
    """Hits (``Hit`` objects or JSON dicts) equal to a reference: the same scores, each the
    float cosine of a shortlisted item, no item twice (the ids themselves up to ties)."""
    ids = [h["id"] if isinstance(h, dict) else h.id for h in hits]
    scores = [h["score"] if isinstance(h, dict) else h.score for h in hits]
    assert len(ids) == len(set(ids)) == len(ref.ids), (ids, ref.ids)
    np.testing.assert_allclose(scores, ref.scores, atol=atol, err_msg=f"{ids} vs {ref.ids}")
    for i, s in zip(ids, scores):
        assert i in ref.cos and abs(ref.cos[i] - s) <= atol, (i, s, ids, ref.ids)


def merged(parts: list[Ref], k: int) -> Ref:
    """Shards' reference answers merged by score; ids as (shard number, id) pairs."""
    rows = sorted(((-float(s), n, r, i) for n, ref in enumerate(parts)
                   for r, (i, s) in enumerate(zip(ref.ids, ref.scores))))[:k]
    cos = {(n, i): s for n, ref in enumerate(parts) for i, s in ref.cos.items()}
    return Ref([(n, i) for _, n, _, i in rows], np.array([-s for s, *_ in rows]), cos)


def same_merged(hits, ref: Ref, first: str | None = None, atol: float = 1e-5) -> None:
    """Merged hits (``Hit`` or JSON) equal to a merged reference; a hit of the first shard
    has shard None (a router's own) or ``first``."""
    def shard(h):
        name = h.get("shard") if isinstance(h, dict) else h.shard
        return 0 if name in (None, first) else 1
    same([{"id": (shard(h), h["id"] if isinstance(h, dict) else h.id),
           "score": h["score"] if isinstance(h, dict) else h.score} for h in hits], ref, atol)


# ------------------------------------------------------------------ Python
@pytest.mark.parametrize("target,k", [("image", 3), ("text", 5)])
def test_python_text_and_vector_paths_rerank_alike(built, target, k):
    c = built["a"]
    Q, FQ = c.encode_query_texts(QUERIES)
    refs = [reference(c, Q[r], FQ[r:r + 1], target, k) for r in range(len(QUERIES))]
    # the Hamming order differs from the re-ranked one for some query: re-ranking is seen
    assert any([h.id for h in c.search_vector(Q[r], target, k, fq=FQ[r:r + 1], rerank=0)] != refs[r].ids
               for r in range(len(QUERIES)))
    batch = c.search_texts(QUERIES, k, target)
    S, I = c.search_vectors(Q, target, k, fq=FQ)  # a batch of vectors with their float rows
    for r, text in enumerate(QUERIES):
        same(c.search_text(text, k, target), refs[r])
        same(batch[r], refs[r])
        same(c.search_vector(Q[r], target, k, fq=FQ[r:r + 1], rerank=TIMES), refs[r])
        # given its float projection, a vector query is re-ranked as a text query is (and as
        # ShardedCollection.search_vector and POST /api/search's fvector do), not by Hamming
        same(c.search_vector(Q[r], target, k, fq=FQ[r:r + 1]), refs[r])
        same(c.search_vector(Q[r], target, k, fq=FQ[r]), refs[r])
        same([{"id": i, "score": s} for i, s in zip(I[r].tolist(), S[r].tolist())], refs[r])


def test_python_image_queries_rerank_alike(built):
    c = built["a"]
    paths = built["images"][:3]
    refs = []
    for p in paths:
        q, fq = c.encode_query_image(p)
        refs.append(reference(c, q, fq, "text", 5))
    many = c.search_images(paths, 5)
    for r, p in enumerate(paths):
        same(c.search_image(p, 5), refs[r])
        same(many[r], refs[r])


def _feedback_reference(c, q, fq, target, k, rel, non):
    q2, fq2 = c.rocchio(np.asarray(q).reshape(1, -1), rel, non, fq=fq)
    assert fq2 is not None
    return reference(c, q2, fq2, target, k)


def test_relevance_feedback_reranks_alike_in_python_and_over_http(built):
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    c = built["a"]
    text, k = QUERIES[0], 5
    q, fq = c.encode_query_text(text)
    first = [h.id for h in c.search_text(text, 10)]
    rel, non = first[5:7], first[:1]
    ref = _feedback_reference(c, q, fq, "image", k, rel, non)
    assert ref.ids != reference(c, q, fq, "image", k).ids  # the feedback changes the answer
    same(c.search_text(text, k, relevant=rel, nonrelevant=non), ref)
    for got in c.search_texts([text, QUERIES[1]], k, relevant=rel, nonrelevant=non)[:1]:
        same(got, ref)
    client = TestClient(create_app(c))
    r = client.post("/api/search", json={"text": text, "k": k, "relevant": rel, "nonrelevant": non})
    assert r.status_code == 200, r.text
    same(r.json()["results"], ref)
    # an image upload with feedback ids
    img = built["images"][2]
    qi, fqi = c.encode_query_image(img)
    caps = [h.id for h in c.search_image(img, 10)]
    ref_i = _feedback_reference(c, qi, fqi, "text", k, caps[6:8], [])
    same(c.search_image(img, k, relevant=caps[6:8]), ref_i)
    r = client.post("/api/search/image", data={"k": str(k), "relevant": f"{caps[6]},{caps[7]}"},
                    files={"file": (img.name, img.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    same(r.json()["results"], ref_i)


# ------------------------------------------------------------------ command line
def test_cli_single_batch_and_json_rerank_alike(built, tmp_path):
    from typer.testing import CliRunner

    from xmodal.cli import app

    c = built["a"]

    def run(*args):
        res = CliRunner().invoke(app, ["search", "-c", str(c.path), *map(str, args)])
        assert res.exit_code == 0, res.output
        return res.stdout

    Q, FQ = c.encode_query_texts(QUERIES)
    refs = [reference(c, Q[r], FQ[r:r + 1], "image", 3) for r in range(len(QUERIES))]
    same(json.loads(run(QUERIES[0], "-k", 3, "--json")), refs[0])
    tsv = [line.split("\t") for line in run(QUERIES[0], "-k", 3).splitlines()]
    same([{"id": int(i), "score": float(s)} for s, i, _ in tsv], refs[0], atol=1e-4)
    qfile = tmp_path / "q.txt"
    qfile.write_text("\n".join(QUERIES) + "\n")
    rows = [json.loads(line) for line in run("--queries", qfile, "-k", 3, "--json").splitlines()]
    assert [r["text"] for r in rows] == QUERIES
    for row, ref in zip(rows, refs):
        same(row["hits"], ref)
    tsv = [line.split("\t") for line in run("--queries", qfile, "-k", 3).splitlines()]
    for r, ref in enumerate(refs):
        same([{"id": int(i), "score": float(s)} for n, s, i, _ in tsv if int(n) == r], ref, atol=1e-4)
    img = built["images"][1]
    q, fq = c.encode_query_image(img)
    same(json.loads(run("--image", img, "-k", 5, "--json")), reference(c, q, fq, "text", 5))


# ------------------------------------------------------------------ HTTP
def test_http_routes_rerank_alike(built):
    from fastapi.testclient import TestClient

    from xmodal.service import create_app

    c = built["a"]
    client = TestClient(create_app(c))
    Q, FQ = c.encode_query_texts(QUERIES)
    for target, k in (("image", 3), ("text", 5)):
        refs = [reference(c, Q[r], FQ[r:r + 1], target, k) for r in range(len(QUERIES))]
        for r, text in enumerate(QUERIES):
            got = client.get("/api/search", params={"q": text, "k": k, "target": target})
            assert got.status_code == 200, got.text
            same(got.json()["results"], refs[r])
            got = client.post("/api/search", json={"text": text, "k": k, "target": target})
            same(got.json()["results"], refs[r])
            body = {"vector": Q[r].tolist(), "fvector": FQ[r].tolist(), "k": k, "target": target}
            got = client.post("/api/search", json=body)
            assert got.status_code == 200, got.text
            same(got.json()["results"], refs[r])
        got = client.post("/api/search/batch", json={"texts": QUERIES, "k": k, "target": target})
        assert got.status_code == 200, got.text
        for row, ref in zip(got.json()["queries"], refs):
            same(row["results"], ref)
    img = built["images"][0]
    q, fq = c.encode_query_image(img)
    got = client.post("/api/search/image", data={"k": "5"},
                      files={"file": (img.name, img.read_bytes(), "image/jpeg")})
    assert got.status_code == 200, got.text
    same(got.json()["results"], reference(c, q, fq, "text", 5))


def test_concurrent_text_queries_encoded_together_rerank_alike(built, monkeypatch):
    """Text queries that arrive while the encoder is busy are encoded as one batch (their float
    rows passed along): each answers as it would alone."""
    import httpx

    from xmodal.service import create_app

    c = built["a"]
    Q, FQ = c.encode_query_texts(QUERIES)
    refs = {t: reference(c, Q[r], FQ[r:r + 1], "image", 3) for r, t in enumerate(QUERIES)}
    batches: list[int] = []
    one, many = c.encode_query_text, c.encode_query_texts

    def slow_one(text):  # holds the encoder while the other queries arrive
        time.sleep(0.4)
        return one(text)

    def counted(texts):
        batches.append(len(texts))
        return many(texts)

    monkeypatch.setattr(c, "encode_query_text", slow_one)
    monkeypatch.setattr(c, "encode_query_texts", counted)
    with serving(create_app(c)) as url:
        def ask(text):
            return text, httpx.get(f"{url}/api/search", params={"q": text, "k": 3}, timeout=30).json()

        with ThreadPoolExecutor(len(QUERIES) * 2) as pool:
            first = pool.submit(ask, QUERIES[0])
            time.sleep(0.15)
            answers = [first.result()] + list(pool.map(ask, QUERIES[1:] * 2))
    assert batches and max(batches) > 1  # some queries were encoded together
    for text, body in answers:
        same(body["results"], refs[text])


# ------------------------------------------------------------------ shards
def test_routing_server_and_shards_rerank_alike(built):
    """A routing server over a re-ranked shard (and the Python and command-line shard searches)
    answers each shard's re-ranked hits merged by cosine, never Hamming scores."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.index import open_shards
    from xmodal.service import create_app

    a, b = built["a"], built["b"]
    Q, FQ = a.encode_query_texts(QUERIES)
    with serving(create_app(b)) as url:
        router = TestClient(create_app(a, shards=[url]))
        with open_shards([a.path, b.path]) as local, open_shards([a.path], [url]) as mixed:
            for r, text in enumerate(QUERIES):
                k = 4
                want = merged([reference(s, Q[r], FQ[r:r + 1], "image", k) for s in (a, b)], k)
                for got in (local.search_text(text, k), mixed.search_text(text, k),
                            local.search_vector(Q[r], "image", k, fq=FQ[r:r + 1])):
                    same_merged(got, want, str(a.path))
                body = router.get("/api/search", params={"q": text, "k": k}).json()
                assert body["failed_shards"] == []
                same_merged(body["results"], want)
                # the router's batch route, and a vector with its float projection
                rows = router.post("/api/search/batch", json={"texts": [text], "k": k}).json()["queries"]
                same_merged(rows[0]["results"], want)
                vec = router.post("/api/search", json={"vector": Q[r].tolist(), "fvector": FQ[r].tolist(),
                                                       "k": k}).json()
                same_merged(vec["results"], want)
            res = CliRunner().invoke(app, ["search", "-c", str(a.path), "-c", str(b.path), QUERIES[0],
                                           "-k", "4", "--json"])
            assert res.exit_code == 0, res.output
            want = merged([reference(s, Q[0], FQ[:1], "image", 4) for s in (a, b)], 4)
            got = json.loads(res.stdout)
            same_merged(got, want, str(a.path))
            # feedback on the router: applied with this collection's ids, then every shard re-ranked
            rel = [h.id for h in a.search_text(QUERIES[0], 8)][4:6]
            q2, fq2 = a.rocchio(Q[:1], rel, [], fq=FQ[:1])
            want = merged([reference(s, q2[0], fq2, "image", 4) for s in (a, b)], 4)
            body = router.post("/api/search", json={"text": QUERIES[0], "k": 4, "relevant": rel}).json()
            same_merged(body["results"], want)


def test_more_like_this_reranks_alike(built):
    """An item as the query (itself left out): Python, HTTP item_id and ``--item`` re-rank by
    its stored float projection."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.service import create_app

    c, k = built["a"], 5
    item = [h.id for h in c.list_items("text", limit=1000)][7]
    q, fq = c.item_vectors([item])
    ref = reference(c, q, fq, "text", k + 1)  # the shortlist of 4 (k + 1), the item itself out
    keep = [n for n, i in enumerate(ref.ids) if i != item][:k]
    ref = Ref([ref.ids[n] for n in keep], ref.scores[keep], ref.cos)
    same(c.search_item(item, k), ref)
    got = TestClient(create_app(c)).post("/api/search", json={"item_id": item, "k": k})
    assert got.status_code == 200, got.text
    same(got.json()["results"], ref)
    res = CliRunner().invoke(app, ["search", "-c", str(c.path), "--item", str(item), "-k", str(k), "--json"])
    assert res.exit_code == 0, res.output
    same(json.loads(res.stdout), ref)


def test_remote_only_shards_without_float_projections_everywhere_answer_by_hamming(built):
    """``xmodal search --shard A --shard B`` (no local collection): when one shard keeps no
    float projections, every shard must answer by Hamming, as with a local shard encoding the
    query (docs/search-engine.md, "Past one machine")."""
    from xmodal.index import open_shards
    from xmodal.service import create_app

    a, plain = built["a"], built["plain"]
    with serving(create_app(a)) as ua, serving(create_app(plain)) as up:
        with open_shards([a.path], [up]) as local, open_shards([], [ua, up]) as remote:
            assert not local.rerank and not remote.rerank
            for text in QUERIES:
                want = local.search_text(text, 8)
                # the local shard encodes the query and drops the float projection: Hamming
                assert all(h.score * 16 == round(h.score * 16) for h in want)
                got = remote.search_text(text, 8)
                assert [(h.key, round(h.score, 5)) for h in got] == [(h.key, round(h.score, 5)) for h in want]


def test_remote_only_shards_and_router_image_queries_rerank_alike(built):
    """Shards all behind servers (each encodes the text itself), a routing server's image
    upload and ``xmodal search --image`` over two collections: the shards' re-ranked answers merged."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.index import open_shards
    from xmodal.service import create_app

    a, b = built["a"], built["b"]
    Q, FQ = a.encode_query_texts(QUERIES)
    with serving(create_app(a)) as ua, serving(create_app(b)) as ub:
        with open_shards([], [ua, ub]) as remote:
            assert remote.rerank
            for r, text in enumerate(QUERIES):
                want = merged([reference(s, Q[r], FQ[r:r + 1], "image", 4) for s in (a, b)], 4)
                same_merged(remote.search_text(text, 4), want, ua)
        img = built["images"][3]
        q, fq = a.encode_query_image(img)
        want = merged([reference(s, q, fq, "text", 5) for s in (a, b)], 5)
        got = TestClient(create_app(a, shards=[ub])).post(
            "/api/search/image", data={"k": "5"}, files={"file": (img.name, img.read_bytes(), "image/jpeg")})
        assert got.status_code == 200, got.text
        same_merged(got.json()["results"], want)
    res = CliRunner().invoke(app, ["search", "-c", str(a.path), "-c", str(b.path), "--image", str(img),
                                   "-k", "5", "--json"])
    assert res.exit_code == 0, res.output
    same_merged(json.loads(res.stdout), want, str(a.path))
