"""Review of the FAISS layer (xmodal.index.vector): factory strings and their metric, search
parameters, training sizes, ids, binary input, index bytes that do not match the spec, and
flat vs approximate scores on one scale."""

import faiss
import numpy as np
import pytest

from xmodal.index import IndexSpecError, VectorIndex
from xmodal.index.vector import MIN_POINTS_PER_CENTROID, IndexFileError, min_train_size


def _unit(n, d, seed=0):
    X = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.parametrize("spec", ["HNSW32,PQ8", "HNSW32_PQ8", "HNSW32,PQ8,RFlat"])
def test_a_spec_faiss_builds_for_l2_is_refused_naming_it_and_the_metric(spec):
    # FAISS's HNSW over PQ codes ignores the metric asked for and searches by L2 distance:
    # its "scores" were distances (lower is better) sorted as cosines (higher is better)
    with pytest.raises(IndexSpecError, match=r"(?s)" + spec.replace("|", r"\|") + ".*L2.*inner product"):
        VectorIndex("real", 32, spec)


@pytest.mark.parametrize("spec", ["IDMap,Flat", "IDMap2,HNSW32"])
def test_an_id_map_in_the_spec_is_refused_when_built_not_on_the_first_add(spec):
    with pytest.raises(IndexSpecError, match="IDMap"):
        VectorIndex("real", 32, spec)


@pytest.mark.parametrize("kind,spec,bad", [
    ("real", "IVF16,Flat", "nprobe=0"), ("real", "IVF16,Flat", "nprobe=-3"),
    ("real", "IVF16,Flat", "nprobe=2.5"), ("real", "HNSW16", "efSearch=0"),
    ("binary", "BIVF16", "nprobe=0"), ("binary", "BHNSW16", "efSearch=0")])
def test_nprobe_and_efsearch_must_be_positive_whole_numbers(kind, spec, bad):
    # nprobe=0 failed inside FAISS on every search; efSearch=0 answered one hit of k
    with pytest.raises(IndexSpecError, match=bad.split("=")[0] + ".*positive whole number"):
        VectorIndex(kind, 32 if kind == "real" else 64, f"{spec}|{bad}")


def test_a_binary_ivf_with_an_hnsw_quantizer_takes_efsearch():
    # a valid FAISS binary spec was refused: the efSearch default was looked for on the IVF
    idx = VectorIndex("binary", 64, "BIVF16_HNSW32|efSearch=40,nprobe=4")
    inner = faiss.downcast_IndexBinary(idx.index.index)
    assert inner.nprobe == 4 and faiss.downcast_IndexBinary(inner.quantizer).hnsw.efSearch == 40
    B = np.random.default_rng(0).integers(0, 256, (800, 8), dtype=np.uint8)
    idx.add(np.arange(800), B)
    assert (idx.search(B[:5], 1)[1][:, 0] == np.arange(5)).all()
    again = VectorIndex.from_bytes("binary", 64, idx.spec, idx.to_bytes())
    assert faiss.downcast_IndexBinary(faiss.downcast_IndexBinary(again.index.index).quantizer).hnsw.efSearch == 40


@pytest.mark.parametrize("kind,spec,need", [
    ("real", "IVF64,Flat", 64 * MIN_POINTS_PER_CENTROID),
    ("real", "IVF16,PQ8", 256 * MIN_POINTS_PER_CENTROID),
    ("real", "PQ8", 256 * MIN_POINTS_PER_CENTROID),
    ("real", "PQ8x4fs", 16 * MIN_POINTS_PER_CENTROID),
    ("real", "PCA16,L2norm,Flat", 32),
    ("real", "HNSW32", 0), ("real", "Flat", 0),
    ("binary", "BIVF64", 64 * MIN_POINTS_PER_CENTROID), ("binary", "BHNSW16", 0)])
def test_min_train_size_follows_faiss_guidance(kind, spec, need):
    idx = VectorIndex(kind, 32 if kind == "real" else 64, spec)
    assert min_train_size(idx.index) == need == idx.min_train_size


def test_ivf_is_not_trained_on_fewer_vectors_than_faiss_asks_for():
    # 300 vectors into 64 lists: FAISS only printed "please provide at least 2496 training
    # points" and the index was trained, for good, on about 5 vectors per list
    X = _unit(300, 32)
    idx = VectorIndex("real", 32, "IVF64,Flat")
    with pytest.raises(IndexSpecError, match=r"'IVF64,Flat' on 300 vectors.*at least 2496"):
        idx.add(np.arange(300), X)
    assert not idx.is_trained and idx.ntotal == 0
    X = _unit(2500, 32)
    idx.add(np.arange(2500), X)
    assert idx.is_trained and idx.ntotal == 2500


def test_ids_are_non_negative_whole_and_unique():
    X = _unit(3, 8)
    idx = VectorIndex("real", 8, "Flat")
    with pytest.raises(ValueError, match="-1"):  # FAISS's "no hit": such an item was never found
        idx.add([-1, 2, 3], X)
    with pytest.raises(ValueError, match="whole"):
        idx.add([1.5, 2, 3], X)
    with pytest.raises(ValueError, match="7 given twice"):
        idx.add([7, 7, 3], X)
    assert idx.ntotal == 0
    idx.add(np.array([1, 2, 3], dtype=np.int32), X)
    assert idx.ids().dtype == np.int64 and idx.ids().tolist() == [1, 2, 3]


@pytest.mark.parametrize("rows,what", [(np.full((1, 8), 300), "300"), (np.full((1, 8), -1), "-1"),
                                        (np.full((1, 8), 0.5), "0.5"), (np.ones((1, 8), bool), "packbits")])
def test_binary_codes_must_be_packed_bytes(rows, what):
    # 300 was stored as 44 (wrapped to uint8): another code, silently
    idx = VectorIndex("binary", 64, "BFlat")
    with pytest.raises(ValueError, match=what):
        idx.add([1], rows)
    idx.add([1], np.full((1, 8), 255.0))  # whole numbers in range, of any dtype: fine
    assert idx.reconstruct(np.array([1])).tolist() == [[255] * 8]


def test_float64_and_non_contiguous_input_search_like_float32():
    X = _unit(200, 16)
    idx = VectorIndex("real", 16, "Flat")
    idx.add(np.arange(200), np.asfortranarray(X.astype(np.float64) * 3.0))
    S1, I1 = idx.search(X[:10], 5)
    strided = np.hstack([X[:10], X[:10]])[:, :16]  # a non-contiguous view of X[:10]
    assert not strided.flags.c_contiguous
    S2, I2 = idx.search(strided, 5)
    S3, I3 = idx.search(np.asfortranarray(X[:10].astype(np.float64)), 5)
    assert (I1 == I2).all() and (I1 == I3).all() and np.allclose(S1, S3, atol=1e-6)
    assert np.allclose(S1[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("spec", ["HNSW16", "IVF8,Flat", "IVF8,PQ4x4,RFlat",
                                  "IVF8,SQ8", "HNSW16,SQ8"])
def test_approximate_scores_are_cosines_like_the_flat_index(spec):
    # same sign and scale as the exact index, so the collection's fallback, re-ranking and
    # the shards' merge compare like with like
    X = _unit(1200, 16)
    Q = _unit(20, 16, seed=1)
    approx, flat = VectorIndex("real", 16, spec), VectorIndex("real", 16, "Flat")
    ids = np.arange(len(X)) * 5
    approx.add(ids, X)
    flat.add(ids, X)
    S, I = approx.search(Q, 10)
    assert (I >= 0).all() and (np.diff(S, axis=1) <= 1e-6).all()  # higher is better
    exact = np.einsum("qd,qkd->qk", Q, X[I // 5])
    assert np.allclose(S, exact, atol=0.02 if "SQ8" in spec else 1e-4)
    Sf, _ = flat.search(Q, 10)
    assert abs(S[:, 0].mean() - Sf[:, 0].mean()) < 0.05


@pytest.mark.parametrize("kind,dim,spec,data", [
    ("real", 32, "Flat", "flat16"),      # another width: FAISS asserted on the first search
    ("real", 16, "HNSW32", "flat16"),    # another index type: an IndexSpecError broke opening
    ("real", 16, "Flat", "bare16"),      # no id map: AttributeError on .id_map
    ("binary", 128, "BFlat", "flat16"),  # a float file read as binary
    ("real", 16, "Flat", "short")])
def test_index_bytes_that_do_not_match_the_spec_are_an_index_file_error(kind, dim, spec, data):
    # a RuntimeError, which Collection catches to rebuild the index from its store
    X = _unit(50, 16)
    v = VectorIndex("real", 16, "Flat")
    v.add(np.arange(50), X)
    blob = {"flat16": v.to_bytes(), "bare16": faiss.serialize_index(faiss.IndexFlatIP(16)).tobytes(),
            "short": v.to_bytes()[:50]}[data]
    with pytest.raises(IndexFileError) as err:
        VectorIndex.from_bytes(kind, dim, spec, blob)
    assert isinstance(err.value, RuntimeError)
    assert VectorIndex.from_bytes("real", 16, "Flat", v.to_bytes()).ntotal == 50


def test_build_checks_a_spec_before_the_width_is_known(tmp_path):
    # build_collection checks the spec before fitting, when the space's width is not known
    # yet: it probed width 64 only, so PQ48 (for a 96-d space) was refused
    from xmodal.index.build import _check_method
    from xmodal.index.collection import TextItem
    from xmodal.index.vector import check_spec

    texts = [TextItem(key="a#0", text="x", pair_key="a", labels=[])]
    _check_method("cca", "PQ48", tmp_path, texts)
    assert check_spec("real", "IVF16,PQ48") == "IVF16,PQ48"
    with pytest.raises(IndexSpecError, match="multiple"):  # the width, once known, is checked
        check_spec("real", "PQ48", dim=64)
    for bad, why in (("HNSW32,PQ8", "L2"), ("Bogus42", "could not parse"), ("HNSW32|efSearch=0", "positive")):
        with pytest.raises(IndexSpecError, match=why):
            _check_method("cca", bad, tmp_path, texts)
    with pytest.raises(IndexSpecError, match="binary"):
        check_spec("real", "BFlat")


# ---------------------------------------------------------------------------- SQLite store
def _tables(db):
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    finally:
        con.close()


def test_a_store_of_another_format_is_not_given_this_versions_schema(tmp_path):
    # the schema was laid over any database before Collection.open read its format: a newer
    # xmodal's collection (here: one that dropped the deleted log) got this version's tables
    # and trigger back, written into it, before being refused
    import json
    import sqlite3

    from xmodal.index.store import SCHEMA_VERSION, Store

    db = tmp_path / "collection.db"
    s = Store(db)
    with s.transaction() as c:
        Store.set_meta(c, "format", SCHEMA_VERSION + 1)
        c.execute("DROP TRIGGER items_deleted")
        c.execute("DROP TABLE deleted")
    s.close()
    before = _tables(db)
    s = Store(db)
    assert s.get_meta("format") == SCHEMA_VERSION + 1
    s.close()
    assert _tables(db) == before and "deleted" not in before
    # this version's own format (and a new file) still gets the schema, older pieces included
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = ? WHERE key = 'format'", (json.dumps(SCHEMA_VERSION),))
    con.commit()
    con.close()
    Store(db).close()
    assert {"deleted", "items_deleted"} <= _tables(db)


def test_an_sqlite_file_of_another_program_is_refused_untouched(tmp_path):
    import sqlite3

    from xmodal.index.store import CollectionError, Store

    db = tmp_path / "collection.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(CollectionError, match="collection.db.*not an xmodal collection.*photos"):
        Store(db)
    assert _tables(db) == {"photos"}
    with pytest.raises(CollectionError, match="not an xmodal collection"):
        Store(db, read_only=True)


def test_a_nan_or_overflowing_row_is_named():
    idx = VectorIndex("real", 4, "Flat")
    X = np.ones((5, 4))
    X[3, 1] = 1e40  # finite in float64, inf in float32
    with pytest.raises(ValueError, match=r"NaN or inf: row 3 \(0-based\) of 5"):
        idx.add(np.arange(5), X)
    with pytest.raises(ValueError, match="row 0"):
        idx.search(np.full(4, np.nan), 1)


@pytest.mark.parametrize("spec", ["PCA8,Flat", "PCA16,HNSW16", "RR8,Flat", "OPQ4_8,IVF8,PQ4"])
def test_a_transform_that_shortens_vectors_needs_l2norm_after_it(spec):
    # PCA centres and drops dimensions: its inner products were about half the cosines of
    # the flat index (0.47 for 0.95 at the top), sorted and merged against them
    with pytest.raises(IndexSpecError, match="L2norm"):
        VectorIndex("real", 16, spec)


def test_pca_with_l2norm_scores_on_the_flat_scale():
    X = _unit(1000, 16)
    idx = VectorIndex("real", 16, "PCA8,L2norm,Flat")
    idx.add(np.arange(1000), X)
    S, I = idx.search(X[:20], 5)
    assert np.allclose(S[:, 0], 1.0, atol=1e-4) and (I[:, 0] == np.arange(20)).all()
    assert S.max() <= 1 + 1e-5 and S.min() >= -1 - 1e-5  # cosines (of the reduced vectors)
    assert VectorIndex("real", 16, "RR16,Flat").spec == "RR16,Flat"  # a rotation keeps lengths


def test_nsg_which_cannot_grow_is_refused():
    # a collection adds items as they come; NSG's second add failed inside FAISS
    with pytest.raises(IndexSpecError, match="NSG.*HNSW"):
        VectorIndex("real", 16, "NSG16,Flat")
