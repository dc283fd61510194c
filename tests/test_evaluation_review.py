"""Defects found by the review of the evaluation code: resampling memory, the hashing
database, and inputs in the wrong format (codes not packed, -1/1 labels)."""

import tracemalloc

import numpy as np
import pytest

from conftest import dcmh_toy

from xmodal.evaluation import significance
from xmodal.evaluation.significance import paired_permutation_test, resample_batch


# ------------------------------------------------------------ significance: bounded memory
def test_resampling_is_batched_to_a_bounded_size(monkeypatch):
    import scipy.stats

    seen = {}
    real = scipy.stats.bootstrap

    def spy(*args, **kw):
        seen["bootstrap"] = kw.get("batch")
        return real(*args, **kw)

    monkeypatch.setattr(scipy.stats, "bootstrap", spy)
    # the sign-flip null draws its uniforms batch by batch: record every draw's size
    draws = []
    real_draw = np.random.RandomState.random_sample

    class Counting(np.random.RandomState):
        def random_sample(self, size=None):
            draws.append(int(np.prod(size)) if size is not None else 1)
            return real_draw(self, size)

    monkeypatch.setattr(np.random, "RandomState", Counting)
    n = 6000
    rng = np.random.default_rng(0)
    paired_permutation_test(rng.random(n), rng.random(n), n_resamples=999)
    assert seen["bootstrap"] == resample_batch(n)
    assert 1 <= resample_batch(n) and 8 * n * resample_batch(n) <= significance.RESAMPLE_BYTES
    assert len(draws) > 1 and sum(draws) == 999 * n * 2  # several batches, every resample drawn
    assert max(draws) * 8 <= significance.RESAMPLE_BYTES
    assert resample_batch(10 ** 9) == 1  # never 0, however many queries


def test_batched_resampling_gives_the_unbatched_results(monkeypatch):
    rng = np.random.default_rng(3)
    for n in (10, 400):  # exact (2^10 sign flips) and random resampling
        a, b = rng.random(n), rng.random(n)
        monkeypatch.setattr(significance, "RESAMPLE_BYTES", 2 ** 40)  # one batch
        whole = paired_permutation_test(a, b, n_resamples=999, seed=5)
        monkeypatch.setattr(significance, "RESAMPLE_BYTES", 8 * n * 7)  # batches of 7
        assert resample_batch(n) == 7
        assert paired_permutation_test(a, b, n_resamples=999, seed=5) == whole


def test_resampling_memory_stays_within_the_batch_bound(monkeypatch):
    monkeypatch.setattr(significance, "RESAMPLE_BYTES", 2 ** 21)
    rng = np.random.default_rng(0)
    n = 2000  # unbatched: several 999 x 2000 float64 arrays at once, over 100 MiB at the peak
    a, b = (rng.random(n) < 0.5).astype(float), (rng.random(n) < 0.5).astype(float)
    tracemalloc.start()
    try:
        paired_permutation_test(a, b, n_resamples=999)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MiB"


# ------------------------------------------------------------ input formats
def test_hamming_distance_refuses_codes_that_are_not_packed_bits():
    from xmodal.methods.base import pack_codes
    from xmodal.metrics import hamming_distance

    B = np.array([[1, -1, 1, 1, -1, -1, 1, -1], [1, 1, 1, 1, -1, -1, 1, -1]])  # one bit apart
    assert hamming_distance(pack_codes(B[:1]), pack_codes(B[1:])).tolist() == [[1]]
    for Q, D, dtype in ((B[:1], B[1:], "int64"), (B[:1].astype(float), B[1:].astype(float), "float64"),
                        (pack_codes(B[:1]), pack_codes(B[1:]).astype(np.int8), "int8")):
        with pytest.raises(ValueError, match=f"dtype {dtype}.*packed.*packbits"):
            hamming_distance(Q, D)


def _labelled(labels):
    from xmodal.data.dataset import PairedDataset

    n = len(labels)
    return PairedDataset(name="pm1", text_to_image=np.arange(n), n_images=n,
                         image_features=np.zeros((n, 2), np.float32),
                         text_features=np.zeros((n, 2), np.float32), labels=labels)


def test_dataset_refuses_labels_outside_0_1_naming_row_and_column():
    from xmodal.data.dataset import DataError

    ok = _labelled(np.array([[1, 0], [0, 1], [1, 1]]))
    assert ok.labels.dtype == np.uint8 and ok.labels.tolist() == [[1, 0], [0, 1], [1, 1]]
    with pytest.raises(DataError, match=r"'pm1'.*field labels row 1 column 0 holds -1.*map -1 to 0"):
        _labelled(np.array([[1, 1], [-1, 1], [1, -1]]))  # -1/1 labels: -1 must not become 255
    with pytest.raises(DataError, match="field labels row 0 column 1 holds 0.5"):
        _labelled(np.array([[1.0, 0.5]]))  # would be cast to 0
    with pytest.raises(DataError, match="row 2 column 0 holds 256"):
        _labelled(np.array([[1, 0], [0, 1], [256, 0]]))  # would be cast to 0
    with pytest.raises(DataError, match="row 1 holds class -1"):
        _labelled(np.array([0, -1, 1]))  # a class vector: -1 would set the last class
    ds = _labelled(np.array([[1, 0], [0, 1]]))
    ds.labels = np.array([[1, 0], [0, 7]])
    with pytest.raises(DataError, match="row 1 column 1 holds 7"):
        ds.validate()


# ------------------------------------------------------------ hashing database
@pytest.fixture
def fits(monkeypatch):
    """Names of the methods fitted, in order: refusals must come before any fitting."""
    from xmodal import methods

    seen = []
    for name in ("dlfh", "lsh"):
        cls = methods.get(name)
        real = cls.fit

        def fit(self, *args, _real=real, _name=name, **kw):
            seen.append(_name)
            return _real(self, *args, **kw)

        monkeypatch.setattr(cls, "fit", fit)
    return seen


def test_learned_codes_score_against_the_training_split(fits):
    from xmodal import methods
    from xmodal.evaluation.bench import run_bench
    from xmodal.methods.hashing.protocol import evaluate_training_codes

    ds = dcmh_toy()
    assert len(ds.splits["database"]) != len(ds.splits["train"])
    rec, = run_bench(ds, ["dlfh"], bits=[16], database_codes="learned")
    assert rec["protocol"].startswith("hashing: dcmh_toy/query vs dcmh_toy/train (the training split")
    assert rec["database_codes"] == "learned"
    train = ds.subset("train")
    m = methods.create("dlfh", bits=16, random_state=0).fit(train)
    want = evaluate_training_codes(m, ds.subset("query"), train, train=train, map_k=(50, 100))
    assert rec["i2t"]["map"] == pytest.approx(want["i2t"]["map"])
    assert rec["t2i"]["map@100"] == pytest.approx(want["t2i"]["map@100"])
    # the default database codes keep the dataset's database split
    rec, = run_bench(ds, ["lsh"], bits=[16])
    assert rec["protocol"].startswith("hashing: dcmh_toy/query vs dcmh_toy/database,")


def test_learned_codes_against_another_database_are_refused_before_fitting(fits):
    from xmodal.evaluation.bench import run_bench
    from xmodal.methods import ParameterError

    with pytest.raises(ParameterError, match="'database' is not the training split"):
        run_bench(dcmh_toy(), ["lsh", "dlfh"], bits=[16], hashing_db="database", database_codes="learned")
    assert fits == []


def test_a_hashing_db_that_is_not_a_split_is_refused_naming_the_splits(fits):
    from xmodal.data.dataset import DataError
    from xmodal.evaluation.bench import run_bench

    with pytest.raises(DataError, match=r"'databse'.*'train', 'query', 'test', 'database'"):
        run_bench(dcmh_toy(), ["lsh"], bits=[16], hashing_db="databse")
    assert fits == []
    rec, = run_bench(dcmh_toy(), ["lsh"], bits=[16], hashing_db="train")  # a real split: used
    assert "vs dcmh_toy/train," in rec["protocol"]


def test_training_codes_database_is_checked_item_by_item():
    from xmodal import methods
    from xmodal.data.dataset import DataError
    from xmodal.methods.hashing.protocol import evaluate_training_codes

    ds = dcmh_toy()
    train, query = ds.subset("train"), ds.subset("query")
    m = methods.create("dlfh", bits=16, random_state=0).fit(train)
    same = evaluate_training_codes(m, query, ds.subset("train"), train=train)  # another copy: fine
    assert same["t2i"]["map"] == evaluate_training_codes(m, query, train)["t2i"]["map"]
    # as many items as the training split, but other ones (sizes alone would pass)
    other = ds.subset(ds.splits["database"][:len(ds.splits["train"])])
    assert other.n_texts == train.n_texts
    evaluate_training_codes(m, query, other)  # without train: only sizes can be checked
    with pytest.raises(DataError, match=r"not the training split 'dcmh_toy/train'.*row 0 differs"):
        evaluate_training_codes(m, query, other, train=train)
    shuffled = ds.subset(ds.splits["train"][::-1])  # the training items, out of order
    with pytest.raises(DataError, match=r"row 0 differs in image \(position in 'dcmh_toy'\)"):
        evaluate_training_codes(m, query, shuffled, train=train)
    # no positions (built directly): compared by image ids
    ids = [f"im{i}" for i in range(ds.n_images)]
    plain = lambda sub: type(ds)(name=sub.name, text_to_image=sub.text_to_image, n_images=sub.n_images,
                                 image_features=sub.image_features, text_features=sub.text_features,
                                 labels=sub.labels, image_ids=sub.image_ids)
    ds.image_ids = ids
    t2 = ds.subset("train")
    assert plain(t2).subset_images is None
    evaluate_training_codes(m, query, plain(t2), train=plain(t2))
    swapped = ds.subset(np.r_[ds.splits["train"][1::-1], ds.splits["train"][2:]])
    with pytest.raises(DataError, match="row 0 differs in image id: 'im.*' against 'im.*'"):
        evaluate_training_codes(m, query, plain(swapped), train=plain(t2))


def test_subsets_remember_their_images_in_the_original_dataset():
    ds = dcmh_toy()
    db = ds.subset("database")
    assert db.subset_of == "dcmh_toy" and np.array_equal(db.subset_images, ds.splits["database"])
    inner = db.subset([4, 0, 2])
    assert inner.subset_of == "dcmh_toy" and inner.subset_images.tolist() == ds.splits["database"][[4, 0, 2]].tolist()
    assert np.array_equal(inner.image_features, ds.image_features[inner.subset_images])


def test_cli_bench_learned_codes_on_a_dcmh_protocol_dataset(tmp_path):
    import json

    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.data.npz import save_npz

    path = save_npz(dcmh_toy(), tmp_path / "dcmh_toy.npz")
    out = tmp_path / "r.json"
    res = CliRunner().invoke(app, ["bench", "--dataset", str(path), "--methods", "dlfh", "--bits", "16",
                                   "--database-codes", "learned", "--quiet", "--json", str(out)])
    assert res.exit_code == 0, res.output
    rec, = json.loads(out.read_text())
    assert rec["database_codes"] == "learned" and "vs dcmh_toy/train (the training split" in rec["protocol"]
