"""FAISS layer: stable ids, float and binary indexes, removal vs tombstones, filters, bytes."""

import faiss
import numpy as np
import pytest

from xmodal.index import IndexSpecError, VectorIndex


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
