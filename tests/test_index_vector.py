"""FAISS layer: stable ids, float and binary indexes, removal vs tombstones, filters, bytes."""

import faiss
import numpy as np
import pytest

from xmodal.index import IndexSpecError, VectorIndex
from xmodal.index.vector import MIN_POINTS_PER_CENTROID, IndexFileError, min_train_size


def _data(n=500, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(np.float32), np.arange(n, dtype=np.int64) * 7 + 3


@pytest.mark.parametrize("spec", ["Flat", "HNSW32", "IVF8,Flat"])
def test_float_index_ids_scores_and_removal(spec):
    X, ids = _data()
    idx = VectorIndex("real", 32, spec)
    idx.add(ids, X)
    S, I = idx.search(X[:5], 3)
    assert (I[:, 0] == ids[:5]).all() if spec == "Flat" else (I[:, 0] == ids[:5]).mean() >= 0.8
    assert np.allclose(S[:, 0][I[:, 0] == ids[:5]], 1.0, atol=1e-5)  # cosine of a vector with itself
    idx.remove([ids[0], ids[1]])
    assert idx.ntotal == len(ids) - 2
    _, I = idx.search(X[:2], 5)
    assert not np.isin(I, ids[:2]).any()
    again = VectorIndex.from_bytes("real", 32, spec, idx.to_bytes(), live_ids=ids[2:])
    assert again.ntotal == len(ids) - 2
    _, I2 = again.search(X[:2], 5)
    assert not np.isin(I2, ids[:2]).any()


def test_hnsw_uses_tombstones_and_exact_over_fetch():
    X, ids = _data(300)
    idx = VectorIndex("real", 32, "HNSW32")
    idx.add(ids, X)
    idx.remove(ids[:50])
    assert len(idx.tombstones) == 50 and idx.ntotal == 250
    _, I = idx.search(X[:50], 10)
    assert (I >= 0).all() and not np.isin(I, ids[:50]).any()
    # Reloaded with the store's live ids, the file's dead ids come back as tombstones.
    again = VectorIndex.from_bytes("real", 32, "HNSW32", idx.to_bytes(), live_ids=ids[50:])
    assert again.tombstones == set(ids[:50].tolist())


@pytest.mark.parametrize("spec", ["BFlat", "BHNSW16", "BHash2x16", "BIVF4"])
def test_binary_index_hamming_scores(spec):
    rng = np.random.default_rng(1)
    B = rng.integers(0, 256, (400, 8), dtype=np.uint8)
    ids = np.arange(400, dtype=np.int64) + 1000
    idx = VectorIndex("binary", 64, spec)
    idx.add(ids, B)
    S, I = idx.search(B[:4], 2)
    assert (I[:, 0] == ids[:4]).all()
    assert np.allclose(S[:, 0], 1.0)
    # score = 1 - 2 * hamming / bits against a brute-force check on the flat index
    if spec == "BFlat":
        ham = np.unpackbits(B[:1] ^ B, axis=1).sum(1)
        best = np.sort(1 - 2 * ham / 64)[::-1][:2]
        assert np.allclose(S[0], best)
    idx.remove([ids[0]])
    _, I = idx.search(B[:1], 3)
    assert ids[0] not in I


def test_filtered_search_is_exact_on_flat():
    X, ids = _data(200)
    idx = VectorIndex("real", 32, "Flat")
    idx.add(ids, X)
    allowed = ids[::10]
    S, I = idx.search(X[:3], 5, allowed=allowed)
    assert np.isin(I[I >= 0], allowed).all()
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    brute = (Xn[:3] @ Xn[::10].T)
    assert np.allclose(np.sort(brute, 1)[:, ::-1][:, :5], S, atol=1e-5)
    with pytest.raises(ValueError, match="flat"):
        VectorIndex("real", 32, "HNSW32").search(X[:1], 1, allowed=allowed)


def test_padding_bad_specs_and_bad_shapes():
    idx = VectorIndex("real", 4, "Flat")
    S, I = idx.search(np.ones((1, 4), np.float32), 3)
    assert (I == -1).all() and np.isneginf(S).all()
    idx.add([5], np.ones((1, 4), np.float32))
    S, I = idx.search(np.ones((1, 4), np.float32), 3)
    assert I.tolist() == [[5, -1, -1]]
    with pytest.raises(IndexSpecError, match="NoSuchIndex"):
        VectorIndex("real", 4, "NoSuchIndex")
    with pytest.raises(IndexSpecError, match="binary"):
        VectorIndex("real", 4, "BFlat")
    with pytest.raises(ValueError, match="4 values"):
        idx.add([1], np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        idx.add([1], np.full((1, 4), np.nan, np.float32))
    assert VectorIndex("binary", 16, "Flat").spec == "BFlat"


def test_ivf_too_few_vectors_to_train():
    X, ids = _data(10)
    idx = VectorIndex("real", 32, "IVF64,Flat")
    with pytest.raises(IndexSpecError, match="train"):
        idx.add(ids, X)


def test_search_parameters_in_the_spec():
    X, ids = _data(2000, 32)
    low = VectorIndex("real", 32, "HNSW8|efSearch=1")
    high = VectorIndex("real", 32, "HNSW8|efSearch=256")
    exact = VectorIndex("real", 32, "Flat")
    for idx in (low, high, exact):
        idx.add(ids, X)
    _, Ie = exact.search(X[:200] + 0.5, 10)

    def recall(idx):
        _, I = idx.search(X[:200] + 0.5, 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I, Ie)])

    assert recall(high) > recall(low) and recall(high) > 0.9
    again = VectorIndex.from_bytes("real", 32, high.spec, high.to_bytes())
    assert faiss.downcast_index(again.index.index).hnsw.efSearch == 256
    assert faiss.downcast_index(VectorIndex("real", 32, "HNSW8").index.index).hnsw.efSearch == 64
    b = VectorIndex("binary", 64, "BIVF4|nprobe=3")
    assert faiss.downcast_IndexBinary(b.index.index).nprobe == 3
    with pytest.raises(IndexSpecError, match="nosuch"):
        VectorIndex("real", 32, "HNSW8|nosuch=3")
    with pytest.raises(IndexSpecError, match="name=value"):
        VectorIndex("real", 32, "HNSW8|efSearch")


def test_reconstruct_gives_back_stored_rows_of_float_and_binary_indexes():
    from xmodal.index.vector import VectorIndex, prepare

    rng = np.random.default_rng(0)
    for kind, dim, rows in (("real", 8, rng.standard_normal((5, 8))),
                            ("binary", 64, rng.integers(0, 256, (5, 8)).astype(np.uint8))):
        idx = VectorIndex(kind, dim, "BFlat" if kind == "binary" else "Flat")
        idx.add(np.arange(10, 15), rows)
        got = idx.reconstruct(np.array([12, 14]))
        np.testing.assert_allclose(got, prepare(kind, rows, dim)[[2, 4]], rtol=1e-6)


# ---------------------------------------------------------------- 7: index factory strings
def test_an_index_spec_is_parsed_before_its_kind_is_judged():
    from xmodal.index.vector import IndexSpecError, VectorIndex

    with pytest.raises(IndexSpecError) as err:
        VectorIndex("real", 64, "Bogus42")
    assert "could not parse index string Bogus42" in str(err.value)
    assert "is binary" not in str(err.value) and "Error in" not in str(err.value)
    for spec in ("BFlat", "BHNSW32", "BHash2x16"):
        with pytest.raises(IndexSpecError, match="is binary but this collection's space is real-valued"):
            VectorIndex("real", 64, spec)
    with pytest.raises(IndexSpecError, match="expected a number"):
        VectorIndex("real", 64, "HNSW32|efSearch=lots")
    with pytest.raises(IndexSpecError, match="expected a whole number"):
        VectorIndex("binary", 64, "HNSW32|efSearch=lots")


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
    # OPQ trains a PQ of 256 centroids per sub-quantizer (nbits 8) ahead of any index
    ("real", "OPQ4,Flat", 256 * MIN_POINTS_PER_CENTROID),
    ("real", "OPQ4,IVF8,Flat", 256 * MIN_POINTS_PER_CENTROID),
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
    with pytest.raises(ValueError, match=r"got .*1\.5"):  # the id that is not whole, not the first
        idx.add([2, 1.5, 3], X)
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

    texts = [TextItem(key=f"{k}#0", text="x", pair_key=k, labels=[]) for k in ("a", "b")]
    _check_method("cca", "PQ48", tmp_path, texts)
    assert check_spec("real", "IVF16,PQ48") == "IVF16,PQ48"
    with pytest.raises(IndexSpecError, match="multiple"):  # the width, once known, is checked
        check_spec("real", "PQ48", dim=64)
    for bad, why in (("HNSW32,PQ8", "L2"), ("Bogus42", "could not parse"), ("HNSW32|efSearch=0", "positive")):
        with pytest.raises(IndexSpecError, match=why):
            _check_method("cca", bad, tmp_path, texts)
    with pytest.raises(IndexSpecError, match="binary"):
        check_spec("real", "BFlat")


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


# ---------------------------------------------------------------- hashing.search: hamming_topk
def test_hamming_topk_k1_is_the_nearest_code_and_k0_is_refused():
    # found by mutation testing: k=1 refused ("1 < k") and k=0 answered an empty array
    # ("0 <= k") both passed the suite
    from xmodal.methods.hashing.search import hamming_topk

    rng = np.random.default_rng(3)
    db = rng.integers(0, 256, (300, 4), dtype=np.uint8)
    q = rng.integers(0, 256, (12, 4), dtype=np.uint8)
    ham = np.unpackbits(q[:, None, :] ^ db[None, :, :], axis=2).sum(2)  # brute force, (12, 300)
    D, I = hamming_topk(q, db, 1)
    assert D.shape == I.shape == (12, 1)
    assert np.array_equal(D[:, 0], ham.min(1))
    assert np.array_equal(ham[np.arange(12), I[:, 0]], ham.min(1))
    ref = faiss.IndexBinaryFlat(32)
    ref.add(db)
    assert np.array_equal(D, ref.search(q, 1)[0])
    for bad in (0, -1, np.int64(0)):
        with pytest.raises(ValueError, match="at least 1"):
            hamming_topk(q, db, bad)


# ---------------------------------------------------------------- mutation testing: vector.py
@pytest.mark.parametrize("spec,param", [("BIVF4", "efSearch=5"), ("BHNSW16", "nprobe=3"),
                                        ("BFlat", "nprobe=2"), ("BFlat", "efSearch=2")])
def test_a_binary_search_parameter_the_index_lacks_is_refused(spec, param):
    # with "nprobe or hasattr(inner, 'nprobe')" a BIVF's efSearch=5 silently set nprobe=5
    with pytest.raises(IndexSpecError, match=f"{spec}.*no search parameter '{param.split('=')[0]}'"):
        VectorIndex("binary", 64, f"{spec}|{param}")
    if spec != "BFlat":  # the parameter it has still goes through
        idx = VectorIndex("binary", 64, f"{spec}|{'nprobe=7' if 'IVF' in spec else 'efSearch=9'}")
        inner = faiss.downcast_IndexBinary(idx.index.index)
        assert (inner.nprobe == 7) if "IVF" in spec else (inner.hnsw.efSearch == 9)


def test_faiss_messages_lose_their_cpp_location_and_may_be_empty():
    from xmodal.index.vector import _faiss_message

    assert _faiss_message(RuntimeError("")) == ""  # no text: no IndexError while reporting
    with pytest.raises(RuntimeError) as err:
        faiss.index_factory(16, "Bogus")
    assert _faiss_message(err.value) == "could not parse index string Bogus"
    # several lines (FAISS joins exceptions from its threads): the last one, unlocated
    two = RuntimeError("thread 0 failed\nError in void f() at /x/y.cpp:12: Error: 'n > 0' failed")
    assert _faiss_message(two) == "'n > 0' failed"


@pytest.mark.parametrize("dim,spec,hint", [(32, "hnsw32", True), (32, "ivf16,flat", True),
                                           (32, "FLAT", False), (30, "PQ8x4fs", False)])
def test_the_case_sensitivity_hint_is_given_for_lower_case_specs_faiss_cannot_parse(dim, spec, hint):
    # only a parse error of a spec with lower-case letters: FLAT has none, and PQ8x4fs at
    # width 30 parses (its error is the width)
    with pytest.raises(IndexSpecError) as err:
        VectorIndex("real", dim, spec)
    assert ("case-sensitive" in str(err.value)) == hint


def test_binary_bytes_of_any_dtype_are_checked_byte_by_byte_at_both_ends():
    # 0 and 255 are bytes in every dtype; -1, 256 and 0.5 are not, and the one bad byte of a
    # row is named (row and byte) even among good ones
    idx = VectorIndex("binary", 64, "BFlat")
    good = np.array([[0, 255, 1, 254, 0, 255, 7, 128]])
    for dtype in (np.int64, np.uint16, np.float64, np.float32):
        idx.add([len(idx.ids())], good.astype(dtype))
    assert (idx.reconstruct(idx.ids()) == good.astype(np.uint8)).all()
    for dtype in (np.int64, np.float64):
        for bad in (-1, 256, 300, 0.5, 254.5):
            if dtype == np.int64 and bad != int(bad):
                continue
            rows = np.tile(good, (3, 1)).astype(dtype)
            rows[2, 5] = bad
            with pytest.raises(ValueError, match=rf"row 2 has {bad!r}.* in byte 5|row 2 has .*{bad}.* in byte 5"):
                idx.add([100, 101, 102], rows)
    assert idx.ntotal == 4


def test_binary_rows_of_the_wrong_width_are_named_in_bytes_and_bits():
    with pytest.raises(ValueError, match=r"binary vectors of 8 bytes \(64 bits\) per row, got shape \(2, 4\)"):
        VectorIndex("binary", 64, "BFlat").add([1, 2], np.zeros((2, 4), np.uint8))


def test_ids_may_come_as_a_column_a_scalar_or_whole_floats():
    X = _unit(3, 8)
    idx = VectorIndex("real", 8, "Flat")
    idx.add(np.array([[4], [5], [6]]), X)          # a column of ids
    idx.add(np.array([7.0, 8.0, 9.0]), X)           # whole floats
    idx.add(np.int64(10), X[:1])                    # one id for one row
    assert idx.ids().tolist() == [4, 5, 6, 7, 8, 9, 10]
    S, I = idx.search(X, 2)
    assert (I[:, 0] != -1).all() and np.allclose(S[:, 0], 1.0, atol=1e-5)


def test_index_bytes_searching_by_another_metric_are_an_index_file_error():
    # same index type (HNSW over flat storage), but FAISS's default L2: its distances would
    # be read as cosines
    l2 = faiss.IndexIDMap2(faiss.IndexHNSWFlat(16, 32))
    l2.add_with_ids(_unit(20, 16), np.arange(20))
    with pytest.raises(IndexFileError, match="IndexHNSWFlat"):
        VectorIndex.from_bytes("real", 16, "HNSW32", faiss.serialize_index(l2).tobytes())
    ip = VectorIndex("real", 16, "HNSW32")
    ip.add(np.arange(20), _unit(20, 16))
    assert VectorIndex.from_bytes("real", 16, "HNSW32", ip.to_bytes()).ntotal == 20


def test_a_spec_refused_before_the_width_is_known_names_no_probe_width():
    from xmodal.index.vector import check_spec

    with pytest.raises(IndexSpecError) as err:
        check_spec("real", "HNSW32,PQ8")  # refused at every probe width (its metric)
    assert "dim 64" not in str(err.value) and "dim" not in str(err.value)
    with pytest.raises(IndexSpecError) as err:
        check_spec("real", "PCA8,Flat")  # "(64 -> 8)" at the first probe width
    assert "(to 8)" in str(err.value) and "64 ->" not in str(err.value)


def test_ids_leave_out_tombstones_and_remove_takes_any_iterable():
    X = _unit(40, 8)
    idx = VectorIndex("real", 8, "HNSW16")  # no removal in FAISS: tombstones
    idx.add(np.arange(40) * 2, X)
    idx.remove({0, 2, 4})             # a set
    idx.remove(i for i in (6, 8))     # a generator
    idx.remove(np.array([10]))
    assert idx.tombstones == {0, 2, 4, 6, 8, 10}
    assert idx.ids().tolist() == list(range(12, 80, 2)) and idx.ntotal == 34
    assert len(idx.stored_ids()) == 40
    flat = VectorIndex("real", 8, "Flat")
    flat.add(np.arange(40), X)
    flat.remove({1, 3})
    assert not flat.tombstones and 1 not in flat.ids() and flat.ntotal == 38


def test_an_index_trains_on_exactly_faiss_minimum():
    X = _unit(4 * MIN_POINTS_PER_CENTROID, 8)
    idx = VectorIndex("real", 8, "IVF4,Flat")
    idx.add(np.arange(len(X)), X)
    assert idx.is_trained and idx.ntotal == 156
    with pytest.raises(IndexSpecError, match="at least 156"):
        VectorIndex("real", 8, "IVF4,Flat").add(np.arange(155), X[:155])


@pytest.mark.parametrize("stored,dead,due", [(100, 1024, False), (100, 1025, True),
                                             (20000, 2000, False), (20000, 2001, True)])
def test_compaction_is_due_past_1024_tombstones_or_a_tenth_of_the_index(stored, dead, due):
    idx = VectorIndex("real", 4, "Flat")
    idx.add(np.arange(stored), np.ones((stored, 4), np.float32))
    idx.tombstones = set(range(10**6, 10**6 + dead))  # the rule reads only their number
    assert idx.needs_compaction() is due


def test_search_refuses_k_below_one():
    idx = VectorIndex("real", 4, "Flat")
    idx.add([1], np.ones((1, 4), np.float32))
    for k in (0, -2):
        with pytest.raises(ValueError, match=">= 1"):
            idx.search(np.ones((1, 4), np.float32), k)


def test_filtered_search_pads_empty_answers_and_skips_tombstones():
    X = _unit(30, 8)
    q = X[:2]
    empty = VectorIndex("real", 8, "Flat")
    for idx, allowed in ((empty, [1, 2]), (empty, []), (VectorIndex("real", 8, "Flat"), [])):
        if idx is not empty:
            idx.add(np.arange(30), X)
        S, I = idx.search(q, 3, allowed=np.array(allowed, np.int64))
        assert S.shape == I.shape == (2, 3) and (I == -1).all() and np.isneginf(S).all()
    one = VectorIndex("real", 8, "Flat")
    one.add([7], X[:1])
    S, I = one.search(q, 2, allowed=np.array([7]))
    assert I.tolist() == [[7, -1], [7, -1]] and np.isclose(S[0, 0], 1.0, atol=1e-5)
    # a flat index loaded with the store's live ids: the file's dead ids are tombstones,
    # which a filter naming them must not bring back
    full = VectorIndex("real", 8, "Flat")
    full.add(np.arange(30), X)
    live = np.arange(1, 30)
    loaded = VectorIndex.from_bytes("real", 8, "Flat", full.to_bytes(), live_ids=live)
    assert loaded.tombstones == {0}
    S, I = loaded.search(q, 4, allowed=np.array([0, 1, 5, 9]))
    brute = q @ X[[1, 5, 9]].T
    order = np.argsort(-brute, axis=1)
    assert (I[:, :3] == np.array([1, 5, 9])[order]).all() and (I[:, 3] == -1).all()
    assert np.allclose(S[:, :3], np.take_along_axis(brute, order, 1), atol=1e-5)
    S, I = loaded.search(q, 2, allowed=np.array([0]))  # only a dead id: nothing
    assert (I == -1).all() and np.isneginf(S).all()


@pytest.mark.parametrize("dead", [range(1, 40, 2), range(2, 40)])
def test_search_around_tombstones_is_the_exact_answer_over_live_items(dead):
    # HNSW with efSearch above the item count is exact: the answer over the live items is
    # the brute-force ranking, live hits kept in order among the dead ones FAISS returns;
    # id 0 is an item like any other, and a query with fewer live items than k is padded
    X = _unit(40, 8, seed=2)
    Q = _unit(6, 8, seed=3)
    idx = VectorIndex("real", 8, "HNSW16|efSearch=200")
    idx.add(np.arange(40), X)
    idx.remove(np.array(list(dead)))
    assert idx.tombstones == set(dead)
    live = np.setdiff1d(np.arange(40), list(dead))
    k = 10
    S, I = idx.search(Q, k)
    assert S.shape == I.shape == (6, k)
    brute = Q @ X[live].T
    order = np.argsort(-brute, axis=1, kind="stable")[:, :k]
    m = min(k, len(live))
    assert (I[:, :m] == live[order][:, :m]).all()
    assert np.allclose(S[:, :m], np.take_along_axis(brute, order, 1)[:, :m], atol=1e-5)
    assert (I[:, m:] == -1).all() and np.isneginf(S[:, m:]).all()


def test_reconstructing_no_ids_gives_an_empty_array_of_the_row_width():
    for kind, dim, spec, width, dtype in (("binary", 64, "BFlat", 8, np.uint8), ("real", 8, "Flat", 8, np.float32)):
        idx = VectorIndex(kind, dim, spec)
        idx.add([1], np.zeros((1, width), dtype))
        got = idx.reconstruct(np.array([], np.int64))
        assert got.shape == (0, width) and got.dtype == dtype


def test_remove_refuses_an_id_that_is_not_whole():
    # remove([1.5]) was cast to int64 and removed item 1 without a word (add refuses 1.5)
    idx = VectorIndex("real", 4, "Flat")
    idx.add([1, 2], np.eye(4)[:2])
    with pytest.raises(ValueError, match=r"whole numbers, got .*1\.5"):
        idx.remove([1.5])
    assert idx.ids().tolist() == [1, 2]
    idx.remove(np.array([1.0]))  # a whole float is the id
    assert idx.ids().tolist() == [2]


def test_a_pca_to_more_dimensions_than_the_vectors_have_is_refused_once_the_width_is_known():
    # `xmodal index photos/ --index PCA64,L2norm,HNSW32` (the guide's example) on a small
    # folder, where CCA keeps 6 dimensions: the PCA could never train ("PCA matrix cannot
    # output 64 dimensions from 6"), that failure was taken for "too few vectors to train
    # yet", and the collection said "index PCA64,L2norm,HNSW32" while every search ran flat.
    from xmodal.index.vector import IndexSpecError, VectorIndex, check_spec

    with pytest.raises(IndexSpecError, match=r"PCA64,L2norm,HNSW32.*dim 6.*64.*from 6.*PCA6"):
        VectorIndex("real", 6, "PCA64,L2norm,HNSW32")
    assert check_spec("real", "PCA64,L2norm,HNSW32") == "PCA64,L2norm,HNSW32"  # width unknown yet
    assert VectorIndex("real", 64, "PCA64,L2norm,HNSW32").spec == "PCA64,L2norm,HNSW32"
    assert VectorIndex("real", 6, "PCA4,L2norm,HNSW32").min_train_size == 6


def _duplicated(n_distinct=300, copies=3, dim=16, seed=0):
    """Unit vectors, each stored ``copies`` times under shuffled ids (a re-added image)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_distinct, dim)).astype(np.float32)
    V = np.tile(X, (copies, 1))
    ids = rng.permutation(len(V)).astype(np.int64) * 7 + 3
    return X, V, ids


@pytest.mark.parametrize("how", ["plain", "allowed", "tombstones"])
def test_equal_scores_come_in_id_order_whatever_k(how):
    """Duplicated vectors score exactly alike: the answer for k is the first k of the answer for
    any larger k (a page's "Show more" keeps what it showed), equal scores in id order, and a
    tie running past k is looked at whole (FAISS's heap picks and orders a tie by k)."""
    X, V, ids = _duplicated()
    spec = "HNSW16" if how == "tombstones" else "Flat"
    vi = VectorIndex("real", 16, spec)
    vi.add(ids, V)
    allowed = None
    if how == "allowed":
        allowed = ids[::2]
    if how == "tombstones":
        vi.remove(ids[:30])
        assert vi.tombstones
    Q = X[:12]
    _, full = vi.search(Q, 200, allowed=allowed)
    for k in (1, 2, 3, 4, 5, 8, 13, 50):
        S, I = vi.search(Q, k, allowed=allowed)
        np.testing.assert_array_equal(I, full[:, :k], err_msg=f"k={k}")
        for s_row, i_row in zip(S, I):
            ok = i_row >= 0
            s, i = s_row[ok], i_row[ok]
            assert np.all(np.diff(s) <= 0)
            same = s[1:] == s[:-1]
            assert np.all(i[1:][same] > i[:-1][same]), (s, i)


def test_a_tie_deeper_than_k_gives_its_smallest_ids():
    """Fifty copies of one vector: top 3 are the three smallest ids of the fifty, and top 60
    the fifty in id order then padding."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8)).astype(np.float32)
    other = rng.standard_normal((20, 8)).astype(np.float32)
    other -= 2 * x / np.linalg.norm(x)  # far from x
    ids = np.concatenate([np.arange(100, 50, -1), np.arange(20)])
    vi = VectorIndex("real", 8, "Flat")
    vi.add(ids, np.vstack([np.repeat(x, 50, 0), other]))
    _, I = vi.search(x, 3)
    assert I[0].tolist() == [51, 52, 53]
    S, I = vi.search(x, 75)
    assert I[0, :50].tolist() == list(range(51, 101))
    assert np.all(S[0, 50:70] < S[0, 49]) and I[0, 70:].tolist() == [-1] * 5


@pytest.mark.parametrize("how", ["plain", "allowed", "removed"])
def test_binary_ties_are_answered_in_stored_order_whatever_k(how):
    """16-bit codes tie by the hundred: FAISS's binary flat index answers a tie in stored order
    for every k (what search() relies on, not re-sorting them)."""
    rng = np.random.default_rng(2)
    C = rng.integers(0, 256, (3000, 2), dtype=np.uint8)
    ids = rng.permutation(3000).astype(np.int64) * 5
    vi = VectorIndex("binary", 16, "Flat")
    vi.add(ids, C)
    allowed = ids[::3] if how == "allowed" else None
    if how == "removed":
        vi.remove(ids[:100])
    _, full = vi.search(C[:10], 500, allowed=allowed)
    for k in (1, 3, 10, 37, 100):
        _, I = vi.search(C[:10], k, allowed=allowed)
        np.testing.assert_array_equal(I, full[:, :k], err_msg=f"k={k}")


@pytest.mark.parametrize("kind,spec,dim", [("real", "IVF8,Flat", 16), ("real", "IVF8,SQ8", 16),
                                           ("real", "PCA8,L2norm,IVF4,Flat", 16), ("binary", "BIVF8", 64)])
def test_removal_from_an_ivf_index_keeps_every_id_with_its_vector(kind, spec, dim):
    """FAISS's id map renumbers its entries on removal, but an IVF keeps its list entries'
    numbers: removing through it handed every later hit the id of the next item (a deleted
    image answered under its neighbour's id). Each remaining vector, as a query, must find its
    own id first, and no removed id may come back."""
    rng = np.random.default_rng(3)
    n = 600
    V = (rng.integers(0, 256, (n, dim // 8), dtype=np.uint8) if kind == "binary"
         else rng.standard_normal((n, dim)).astype(np.float32))
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    vi = VectorIndex(kind, dim, spec)
    vi.add(ids, V)
    gone = ids[[7, 8, 100, 311, 599]]
    vi.remove(gone)
    keep = np.setdiff1d(np.arange(n), [7, 8, 100, 311, 599])
    for idx in (vi, VectorIndex.from_bytes(kind, dim, spec, vi.to_bytes(), live_ids=ids[keep])):
        S, I = idx.search(V[keep], 5)
        assert not np.isin(I, gone).any()
        own = I[:, 0] == ids[keep]
        # binary codes may tie at distance 0 with another item; the own id is then among them
        assert own.mean() > 0.97 if kind == "binary" else own.all(), np.flatnonzero(~own)[:5]


def test_an_ivf_file_whose_lists_are_out_of_step_with_its_id_map_is_refused():
    """An IVF index file written after a removal by an older xmodal holds list numbers its id
    map no longer matches: loading it is refused (IndexFileError: the collection rebuilds the
    index from its stored vectors) instead of answering with other items' ids."""
    rng = np.random.default_rng(4)
    vi = VectorIndex("real", 16, "IVF8,Flat")
    vi.add(np.arange(400, dtype=np.int64), rng.standard_normal((400, 16)).astype(np.float32))
    sound = vi.to_bytes()
    VectorIndex.from_bytes("real", 16, "IVF8,Flat", sound)  # loads
    vi.index.remove_ids(np.array([5, 6], dtype=np.int64))  # what an older xmodal did
    with pytest.raises(IndexFileError, match="out of step"):
        VectorIndex.from_bytes("real", 16, "IVF8,Flat", vi.to_bytes())
