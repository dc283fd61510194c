"""The evaluation layer: the hashing database in resume and seed
pooling, the statistics against scipy, the protocols' definitions."""

import json

import numpy as np
import pytest

from conftest import dcmh_toy
from xmodal.data.dataset import PairedDataset
import tracemalloc
from xmodal.evaluation import significance
from xmodal.evaluation.significance import paired_permutation_test, resample_batch


def _dcmh_toy() -> PairedDataset:
    return dcmh_toy(400, 80, 200)  # query 80, train 200, database 320 (larger than train)


# ------------------------------------------------------------ bench: the hashing database
def test_resume_never_reuses_a_record_scored_against_another_hashing_database(tmp_path):
    from xmodal.evaluation.bench import run_bench

    ds, path = _dcmh_toy(), tmp_path / "runs.jsonl"
    first, = run_bench(ds, ["lsh"], bits=[16], resume=path)
    assert "vs dcmh_toy/database," in first["protocol"]
    again, = run_bench(ds, ["lsh"], bits=[16], resume=path, hashing_db="train")
    assert "vs dcmh_toy/train," in again["protocol"]  # scored against the split asked for
    fresh, = run_bench(ds, ["lsh"], bits=[16], hashing_db="train")
    assert again["i2t"]["map"] == fresh["i2t"]["map"]
    # and the first database's record is still the one a default run reuses
    reused = []
    back, = run_bench(ds, ["lsh"], bits=[16], resume=path, on_reused=reused.append)
    assert reused and back["i2t"]["map"] == first["i2t"]["map"]


def test_seed_summaries_never_pool_records_scored_against_other_databases():
    from xmodal.evaluation.bench import format_hashing_tables, summarize_seeds

    ds = _dcmh_toy()
    from xmodal.evaluation.bench import run_bench

    a, = run_bench(ds, ["lsh"], bits=[16], seed=0)
    b, = run_bench(ds, ["lsh"], bits=[16], seed=1, hashing_db="train")
    assert len(summarize_seeds([a, b])) == 2  # never one mean of two protocols
    with pytest.raises(ValueError, match="protocol"):
        format_hashing_tables([a, b])


def test_resume_redoes_a_record_without_the_map_at_k_asked_for(tmp_path):
    from xmodal.evaluation.bench import run_bench

    ds, path = _dcmh_toy(), tmp_path / "runs.jsonl"
    run_bench(ds, ["lsh"], bits=[16], resume=path)
    rec, = run_bench(ds, ["lsh"], bits=[16], resume=path, map_k=[20])
    assert "map@20" in rec["i2t"] and "map@20" in rec["t2i"]


# ------------------------------------------------------------ significance against first principles
def test_exact_sign_flip_p_value_is_the_share_of_flips_at_least_as_extreme():
    """Few queries: scipy enumerates all 2^n flips (identity included, so p > 0); the
    two-sided p is the share with |sum| >= the observed |sum|."""
    from itertools import product

    from xmodal.evaluation.significance import paired_permutation_test

    rng = np.random.default_rng(3)
    a, b = rng.random(9), rng.random(9) * 0.8
    d = (a - b) / 9
    flips = np.array(list(product((1, -1), repeat=9)))
    want = np.mean(np.abs(flips @ d) >= abs(d.sum()) - 1e-12)
    got = paired_permutation_test(a, b)
    assert got["p_value"] == pytest.approx(want)
    assert got["difference"] == pytest.approx(d.sum())


def test_p_value_is_never_zero_and_identical_methods_give_one():
    from xmodal.evaluation.significance import paired_permutation_test

    a = np.linspace(0.5, 1.0, 200)
    got = paired_permutation_test(a, a - 0.4, n_resamples=99)
    assert got["p_value"] == pytest.approx(2 / 100)  # (0 + 1) / (99 + 1), doubled: two-sided
    same = paired_permutation_test(a, a.copy())
    assert same["p_value"] == 1.0 and same["ci_low"] == same["ci_high"] == 0.0


def test_bootstrap_interval_is_the_percentile_interval_of_the_mean_difference():
    from scipy.stats import bootstrap

    from xmodal.evaluation.significance import paired_permutation_test

    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300)
    got = paired_permutation_test(a, b, n_resamples=2000, seed=4)
    ci = bootstrap((a - b,), np.mean, n_resamples=2000, method="percentile", random_state=4).confidence_interval
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((ci.low, ci.high), abs=1e-9)
    # an independent percentile bootstrap agrees to resampling noise
    idx = rng.integers(0, 300, (4000, 300))
    lo, hi = np.percentile((a - b)[idx].mean(axis=1), [2.5, 97.5])
    assert got["ci_low"] == pytest.approx(lo, abs=0.01) and got["ci_high"] == pytest.approx(hi, abs=0.01)


def test_holm_is_step_down_and_monotone():
    from xmodal.evaluation.significance import holm

    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert holm(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5])
    adj = np.array(holm(p))
    order = np.argsort(p)
    assert np.all(np.diff(adj[order]) >= 0)


def test_mr_interval_resamples_each_direction_on_its_own():
    """mR weighs an image query 1/(2 n_images) and a caption query 1/(2 n_texts): resampling
    the two directions' queries as one pool lets a resample hold more images than the test
    set, which widens the interval with noise that is not in mR. Here every image query
    gains a hit and no caption query changes: mR differs by exactly 50 in every resample
    that keeps 100 images and 500 captions."""
    from xmodal.evaluation.significance import compare_records

    def rec(i2t_hit):
        return {"method": "m", "dataset": "toy",
                "i2t": {"per_query": {f"r@{k}": [i2t_hit] * 100 for k in (1, 5, 10)}},
                "t2i": {"per_query": {f"r@{k}": [1, 0, 0, 1, 0] * 100 for k in (1, 5, 10)}}}

    got = compare_records(rec(1), rec(0), metric="mR", n_resamples=999)["both"]
    assert got["difference"] == pytest.approx(50.0)
    assert got["ci_low"] == pytest.approx(50.0) and got["ci_high"] == pytest.approx(50.0)


# ------------------------------------------------------------ protocols as the papers define them
class _Given:
    """Scores its inputs as they are (cosine of the given vectors): a ranking fixed by hand."""
    output = "real"

    def encode_images(self, X):
        return np.asarray(X, dtype=np.float64)

    def encode_texts(self, Y):
        return np.asarray(Y, dtype=np.float64)


def _toy(image_vecs, text_vecs, t2i, labels=None):
    return PairedDataset(name="toy", text_to_image=np.asarray(t2i), n_images=len(image_vecs),
                         image_features=np.asarray(image_vecs, np.float32),
                         text_features=np.asarray(text_vecs, np.float32),
                         labels=None if labels is None else np.asarray(labels, np.uint8))


def test_recall_counts_any_caption_of_an_image_and_the_one_image_of_a_caption():
    from xmodal.evaluation import evaluate

    e = np.eye(4)
    # image 0 is closest to caption 2 (image 1's) then caption 1 (its own second caption);
    # image 1 is closest to its own caption 2; image 2 has no caption
    imgs = [e[0] + 0.1 * e[3], e[1], e[2] + 0.05 * e[3]]
    texts = [e[3], e[0] + 0.5 * e[1], e[0] + e[1] * 0.2 + 0.1 * e[2], e[1] + 0.3 * e[2]]
    t2i = [0, 0, 1, 1]
    res = evaluate(_Given(), _toy(imgs, texts, t2i), rk=(1, 2), pk=(), ndcg_k=(), curves=False,
                   per_query=True, tie_seed=None)
    # image 0's ranking: text 2 (image 1's), text 1 (its own) -> a hit at 2, not at 1;
    # image 1's: text 3 (its own) first; image 2 has no caption: left out
    assert res["i2t"]["per_query"]["r@1"] == [0, 1]
    assert res["i2t"]["per_query"]["r@2"] == [1, 1]
    assert res["i2t"]["r@1"] == 50.0
    # each caption's one image: a hit where that image ranks first
    S = [[np.dot(t, i) / np.linalg.norm(t) / np.linalg.norm(i) for i in imgs] for t in texts]
    own_first = [int(np.argmax(s) == t2i[j]) for j, s in enumerate(S)]
    assert res["t2i"]["per_query"]["r@1"] == own_first
    # mR: the mean of the four Recall@K (two K, two directions), in percent
    t2i_r2 = [int(t2i[j] in np.argsort(s, kind="stable")[::-1][:2]) for j, s in enumerate(S)]
    assert res["i2t"]["r@2"] == 100.0
    assert res["mR"] == pytest.approx((50.0 + 100.0 + 100 * np.mean(own_first) + 100 * np.mean(t2i_r2)) / 4)


def test_multi_label_relevance_is_sharing_a_label_and_map_spans_the_whole_database():
    from xmodal.evaluation import evaluate

    e = np.eye(3)
    imgs = [e[0], e[1], e[2]]
    texts = [e[0], e[1], e[2]]
    labels = [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    res = evaluate(_Given(), _toy(imgs, texts, [0, 1, 2], labels), rk=(), pk=(1, 3), ndcg_k=(),
                   curves=False, per_query=True, tie_seed=None, map_k=(1,))
    # image 0 ranks text 0 (shares both), then texts 1 and 2 tied at 0 (database order):
    # text 1 shares label 1 -> relevant; AP = (1/1 + 2/2) / 2 = 1
    # image 1 ranks text 1, then text 0 (shares label 1), text 2: AP = 1
    # image 2: only text 2 relevant, first: AP = 1
    assert res["i2t"]["per_query"]["ap"] == [1.0, 1.0, 1.0]
    assert res["i2t"]["p@3"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3)


# ------------------------------------------------------------ select: folds
def test_parameter_search_folds_hold_whole_images_of_the_training_split_only(monkeypatch):
    from xmodal.evaluation import select
    from xmodal import methods

    CCA = methods.get("cca")

    rng = np.random.default_rng(0)
    n, per = 90, 3
    lab = rng.integers(0, 4, n)
    X = np.eye(4)[lab] @ rng.standard_normal((4, 12)) + 0.5 * rng.standard_normal((n, 12))
    t2i = np.repeat(np.arange(n), per)
    Y = np.eye(4)[lab[t2i]] @ rng.standard_normal((4, 10)) + 0.5 * rng.standard_normal((n * per, 10))
    order = rng.permutation(n)
    ds = PairedDataset(name="toy", text_to_image=t2i, n_images=n, image_features=X.astype(np.float32),
                       text_features=Y.astype(np.float32),
                       splits={"train": np.sort(order[:60]), "test": np.sort(order[60:])})
    seen = []
    real_eval, real_fit = select.evaluate, CCA.fit

    def evaluate(m, held, **kw):
        seen.append(("held", held.subset_images.tolist(), len(held.text_to_image)))
        return real_eval(m, held, **kw)

    def fit(self, train, *a, **kw):
        seen.append(("fit", train.subset_images.tolist(), len(train.text_to_image)))
        return real_fit(self, train, *a, **kw)

    monkeypatch.setattr(select, "evaluate", evaluate)
    monkeypatch.setattr(CCA, "fit", fit)
    first = select.select_params("cca", {"n_components": [2, 3], "reg": [1e-3, 1e-1]}, ds, folds=3,
                                 max_images=45, random_state=7)
    runs, seen[:] = list(seen), []
    again = select.select_params("cca", {"n_components": [2, 3], "reg": [1e-3, 1e-1]}, ds, folds=3,
                                 max_images=45, random_state=7)
    assert seen == runs and again.table == first.table and again.params == first.params
    train = set(ds.splits["train"].tolist())
    held = [set(imgs) for kind, imgs, _ in runs if kind == "held"]
    fits = [set(imgs) for kind, imgs, _ in runs if kind == "fit"]
    assert all(kind == "fit" or n_texts == per * len(imgs) for kind, imgs, n_texts in runs)  # no image split
    assert all(s <= train for s in held + fits)  # the test split is never seen
    # one combination's three folds (CCA scores both sizes per fold: one fit, two evaluations):
    # disjoint, together the searched images
    folds = [set(f) for f in dict.fromkeys(tuple(sorted(h)) for h in held)][:3]
    held = [h for i, h in enumerate(held) if i % 2 == 0]
    assert sum(map(len, folds)) == 45 and len(set().union(*folds)) == 45
    assert all(not (f & h) for f, h in zip(fits, held))  # fitted on the other folds only


# ------------------------------------------------------------ compare: same test queries only
def _pq(method, hits, **extra):
    return {"method": method, "dataset": "toy", "protocol": "classic: toy/test vs itself (other modality)",
            "i2t": {"per_query": {"ap": list(hits)}}, "t2i": {"per_query": {"ap": list(hits)}}, **extra}


@pytest.mark.parametrize("field, va, vb", [("data_options", {"split": "official"}, None),
                                           ("data_digest", "a" * 64, "b" * 64)])
def test_compare_refuses_records_of_other_data_options_or_data_as_read(field, va, vb):
    from xmodal.data.dataset import DataError
    from xmodal.evaluation.significance import compare_records

    hits = np.linspace(0, 1, 20)
    a = _pq("a", hits, **({field: va} if va is not None else {}))
    b = _pq("b", hits[::-1], **({field: vb} if vb is not None else {}))
    with pytest.raises(DataError, match=field):
        compare_records(a, b)
    if field == "data_digest":  # older records carry no digest: compared as before
        compare_records(a, _pq("b", hits[::-1]))


def test_compare_refuses_per_query_scores_that_are_not_finite():
    from xmodal.data.dataset import DataError
    from xmodal.evaluation.significance import compare_records

    a, b = _pq("a", [0.5, 0.2, 0.9]), _pq("b", [0.1, 0.3, 0.4])
    b["t2i"]["per_query"]["ap"][1] = None  # a NaN, as strict JSON writes it
    with pytest.raises(DataError, match=r"'b'.*t2i.*query 1"):
        compare_records(a, b)


# ------------------------------------------------------------ bench: resume
def test_an_interrupted_and_resumed_run_gives_the_uninterrupted_tables(tmp_path):
    from xmodal.evaluation.bench import format_hashing_tables, format_table, read_jsonl, run_bench

    ds, path = _dcmh_toy(), tmp_path / "runs.jsonl"
    whole = run_bench(ds, ["cca", "lsh"], bits=[16, 32], seed=[0, 1], per_query=True)
    run_bench(ds, ["cca", "lsh"], bits=[16], seed=[0], resume=path, per_query=True)
    with open(path, "a") as f:  # killed mid-write
        f.write('{"dataset": "dcmh_toy", "meth')
    resumed = run_bench(ds, ["cca", "lsh"], bits=[16, 32], seed=[0, 1], resume=path, per_query=True)

    def scores(recs):
        keep = ("method", "bits", "seed", "protocol", "i2t", "t2i", "mR")
        return [{k: r.get(k) for k in keep} for r in recs]

    def table(text):  # the fit seconds are each run's own
        return [line.rsplit("|", 2)[0] for line in text.splitlines()]

    assert scores(resumed) == scores(whole)
    # the file holds every record once (the torn line cut), in the order they were done
    order = lambda recs: sorted(scores(recs), key=lambda r: (r["method"], r["bits"] or 0, r["seed"]))  # noqa: E731
    assert order(read_jsonl(path)) == order(whole)
    assert table(format_table(resumed, markdown=True)) == table(format_table(whole, markdown=True))
    assert table(format_hashing_tables(resumed)) == table(format_hashing_tables(whole))


def test_cli_compare_of_two_identical_runs_gives_p_one_in_strict_json(tmp_path):
    from typer.testing import CliRunner

    from xmodal.cli import app
    from xmodal.evaluation.bench import run_bench

    rec, = run_bench(_dcmh_toy(), ["cca"], per_query=True)
    log = tmp_path / "runs.jsonl"
    log.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "method": "cca_again"}) + "\n")
    res = CliRunner().invoke(app, ["compare", str(log), "cca", "cca_again", "--resamples", "499", "--json"])
    assert res.exit_code == 0, res.output

    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    out = json.loads(res.output, parse_constant=refuse)
    for d in ("i2t", "t2i"):
        assert out[d]["difference"] == 0.0 and out[d]["p_value"] == 1.0
    # another test set (a record scored against other folds) is refused, naming what differs
    log.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "method": "cca_again", "test_folds": 2}) + "\n")
    res = CliRunner().invoke(app, ["compare", str(log), "cca", "cca_again"])
    assert res.exit_code == 2 and "differ in test_folds" in res.output


def test_hashing_tables_never_put_methods_of_other_databases_under_one_heading(tmp_path):
    """The heading names one database for the whole table: records scored with learned
    training codes, or against another split, are not shown under it."""
    from xmodal.evaluation.bench import format_hashing_tables, plot_pr_curves, run_bench

    ds = _dcmh_toy()
    lsh, = run_bench(ds, ["lsh"], bits=[16])
    learned, = run_bench(ds, ["dlfh"], bits=[16], database_codes="learned")
    other_db, = run_bench(ds, ["cca_itq"], bits=[16], hashing_db="train")
    for mixed in ([lsh, learned], [lsh, other_db]):
        with pytest.raises(ValueError, match="protocol"):
            format_hashing_tables(mixed)
        with pytest.raises(ValueError, match="protocol"):
            plot_pr_curves(mixed, tmp_path / "pr.png")
    assert "database: codes from the hash functions" in format_hashing_tables([lsh])


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


# ------------------------------------------------------------ evaluate(): what a result says
def test_a_result_names_its_protocol_as_the_bench_record_does_and_compare_refuses_a_mix():
    """A classic and a hashing result of the same size (Wikipedia: 693 test and 693 query items)
    were paired by compare_records without complaint; each result now says which queries were
    ranked against which database, in the bench record's words."""
    import dataclasses

    from xmodal import methods
    from xmodal.data import DataError
    from xmodal.evaluation import evaluate, evaluate_folds
    from xmodal.evaluation.bench import run_bench
    from xmodal.evaluation.significance import compare_records

    ds = _dcmh_toy()
    lsh = methods.create("lsh", bits=16).fit(ds.subset("train"))
    cca = methods.create("cca", n_components=4).fit(ds.subset("train"))
    query, db = ds.subset("query"), ds.subset("database")
    hashing = evaluate(lsh, query, db, per_query=True)
    classic = evaluate(cca, query, per_query=True)
    assert hashing["protocol"] == "hashing: dcmh_toy/query vs dcmh_toy/database, database codes from the hash functions"
    assert classic["protocol"] == "classic: dcmh_toy/query vs itself (other modality)"
    rec, = run_bench(ds, ["lsh"], bits=[16])
    assert rec["protocol"] == hashing["protocol"]
    assert evaluate_folds(cca, query, 2)["protocol"].endswith(", mean over 2 folds of about 40 images")
    with pytest.raises(DataError, match="differ in protocol"):
        compare_records(classic, hashing)
    # unlabelled on either side, the hashing protocol scored nothing and said nothing
    for q, d, named in ((query, dataclasses.replace(db, labels=None), "database 'dcmh_toy/database'"),
                        (dataclasses.replace(query, labels=None), db, "queries 'dcmh_toy/query'")):
        with pytest.raises(DataError, match=f"{named}: no labels; the hashing protocol"):
            evaluate(lsh, q, d)
