"""The benchmark runner and the evaluation protocols held to what docs/bench.md says: which
split queries which under each protocol, which database codes, the label budget only for the
semi-supervised methods, one record per seed, test folds, a failed run reported while the
others go on, and --resume reusing exactly the records a rerun would make. Each test here
kills mutants of src/xmodal/evaluation/bench.py and protocol.py that the other tests let live."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from conftest import DATA, dcmh_toy, need
from xmodal import methods
from xmodal.data import DataError
from xmodal.data.dataset import PairedDataset
from xmodal.evaluation.bench import run_bench
from xmodal.evaluation.protocol import evaluate, evaluate_folds, protocol_of
from xmodal.methods import ParameterError


@pytest.fixture(scope="module")
def wiki():
    need("wikipedia")
    from xmodal.data import load_dataset

    return load_dataset("wikipedia", data_dir=str(DATA))


def _scores(rec_or_res: dict) -> dict:
    """The scalar scores of both directions (curves and per-query lists left out)."""
    return {d: {k: v for k, v in rec_or_res[d].items() if isinstance(v, float)} for d in ("i2t", "t2i")}


# ------------------------------------------------------------ refused before anything is loaded
@pytest.mark.parametrize("seed", [[], [3, 3]])
def test_an_empty_or_repeated_seed_list_is_refused(seed):
    with pytest.raises(ValueError, match="distinct seeds"):
        run_bench(dcmh_toy(), ["lsh"], bits=[16], seed=seed)


# ------------------------------------------------------------ which split queries which
def _five_splits() -> PairedDataset:
    """dcmh_toy with every split distinct: 'test' (classic) is not 'query' (hashing), the
    database is larger than 'train', and there is a 'val' split."""
    ds = dcmh_toy(500, 60, 200)
    rest = np.setdiff1d(ds.splits["database"], ds.splits["train"])
    ds.splits = {"train": ds.splits["train"], "query": ds.splits["query"], "test": rest[:50],
                 "val": rest[50:80], "database": ds.splits["database"]}
    return ds


def test_each_protocol_ranks_its_own_queries_against_its_own_database(monkeypatch):
    ds = _five_splits()
    seen = []
    for name in ("cca", "lsh"):
        cls = methods.get(name)

        def fit(self, train, val=None, _real=cls.fit):
            seen.append((type(self).__name__, train.name, None if val is None else val.name))
            return _real(self, train, val=val)

        monkeypatch.setattr(cls, "fit", fit)
    cca, lsh = run_bench(ds, ["cca", "lsh"], bits=[16], seed=3)
    assert seen == [("CCA", "dcmh_toy/train", "dcmh_toy/val"), ("LSH", "dcmh_toy/train", "dcmh_toy/val")]
    train, test, query, database = (ds.subset(s) for s in ("train", "test", "query", "database"))
    monkeypatch.undo()
    # classic: the 'test' split against itself; hashing: 'query' against 'database'
    m = methods.create("cca").fit(train)
    assert cca["protocol"] == protocol_of(test) == "classic: dcmh_toy/test vs itself (other modality)"
    assert _scores(cca) == _scores(evaluate(m, test))
    assert cca["mR"] == evaluate(m, test)["mR"] and cca["bits"] is None and cca["database_codes"] is None
    m = methods.create("lsh", bits=16, random_state=3).fit(train)
    want = evaluate(m, query, database, map_k=(50, 100))
    assert lsh["protocol"] == protocol_of(query, database)
    assert lsh["protocol"] == "hashing: dcmh_toy/query vs dcmh_toy/database, database codes from the hash functions"
    assert _scores(lsh) == _scores(want) and "map@50" in lsh["i2t"] and "mR" not in lsh
    assert lsh["database_codes"] == "hash" and lsh["bits"] == 16 and lsh["seed"] == 3
    # without a database split, the hashing database is the training split
    del ds.splits["database"]
    rec, = run_bench(ds, ["lsh"], bits=[16], seed=3)
    assert rec["protocol"] == protocol_of(query, train)
    assert _scores(rec) == _scores(evaluate(m, query, train, map_k=(50, 100)))


# ------------------------------------------------------------ seeds, bits, label budget
def test_every_bit_length_runs_once_per_seed_with_that_seed(wiki):
    recs = run_bench("wikipedia", ["lsh"], bits=[16, 32], seed=[5, 2], data_dir=str(DATA), per_query=True)
    assert [(r["bits"], r["seed"]) for r in recs] == [(16, 5), (16, 2), (32, 5), (32, 2)]
    query, database = wiki.subset("query"), wiki.subset("database")
    for r in recs:
        assert r["params"]["random_state"] == r["seed"] and r["params"]["bits"] == r["bits"]
        assert r["settings"] == {} and r["dataset"] == "wikipedia" and "data_options" not in r
        m = methods.create("lsh", bits=r["bits"], random_state=r["seed"]).fit(wiki.subset("train"))
        want = evaluate(m, query, database, map_k=(50, 100), per_query=True)
        assert _scores(r) == _scores(want)
        assert r["i2t"]["per_query"]["ap"] == want["i2t"]["per_query"]["ap"]
    assert recs[0]["i2t"]["map"] != recs[1]["i2t"]["map"]  # the seeds drew other projections


def test_the_label_budget_goes_to_the_semi_supervised_methods_only():
    ds = dcmh_toy(300, 50, 120)
    ss, lsh = run_bench(ds, ["sslpdp", "lsh"], bits=[16], labeled_fraction=0.3)
    assert ss["settings"] == {"labeled_fraction": 0.3} and ss["params"]["labeled_fraction"] == 0.3
    assert lsh["settings"] == {} and "labeled_fraction" not in lsh["params"]
    m = methods.create("sslpdp", bits=16, labeled_fraction=0.3, random_state=0).fit(ds.subset("train"))
    assert _scores(ss) == _scores(evaluate(m, ds.subset("query"), ds.subset("database"), map_k=(50, 100)))
    # a budget set for the method itself wins over the run's
    ss, = run_bench(ds, ["sslpdp"], bits=[16], labeled_fraction=0.3, params={"sslpdp": {"labeled_fraction": 0.5}})
    assert ss["settings"] == {"labeled_fraction": 0.5} and ss["params"]["labeled_fraction"] == 0.5
    # without one, the method's own default is used and the settings stay empty
    ss, = run_bench(ds, ["sslpdp"], bits=[16])
    assert ss["settings"] == {} and ss["params"]["labeled_fraction"] == methods.get("sslpdp")().labeled_fraction


# ------------------------------------------------------------ test folds
def test_folded_records_are_the_mean_over_the_folds_and_say_so():
    ds = _five_splits()
    rec, = run_bench(ds, ["cca"], test_folds=2, per_query=True)
    test = ds.subset("test")
    want = evaluate_folds(methods.create("cca").fit(ds.subset("train")), test, 2, per_query=True)
    assert rec["test_folds"] == 2 and rec["protocol"] == protocol_of(test, folds=2)
    assert rec["protocol"].endswith("mean over 2 folds of about 25 images")
    assert _scores(rec) == _scores(want) and rec["mR"] == want["mR"]
    assert rec["fold_std"] == json.loads(json.dumps(want["fold_std"]))
    assert rec["t2i"]["per_query"] == want["t2i"]["per_query"]
    one, = run_bench(ds, ["cca"])
    assert "test_folds" not in one and "fold_std" not in one and one["i2t"]["map"] != rec["i2t"]["map"]


# ------------------------------------------------------------ data options, resume
def test_data_options_are_for_a_dataset_loaded_by_name_and_a_bad_resume_file_comes_first(tmp_path):
    with pytest.raises(ParameterError, match="data_options apply to a dataset loaded by name or path"):
        run_bench(dcmh_toy(), ["lsh"], bits=[16], data_options={"split": "official"})
    bad = tmp_path / "runs.jsonl"
    bad.write_text("not a record\n")
    # the resume file is read before any dataset: its error, not the dataset's
    with pytest.raises(DataError, match="runs.jsonl: not a records file: line 1"):
        run_bench(str(tmp_path / "no_such_dataset.jsonl"), ["lsh"], bits=[16], resume=bad)
    assert bad.read_text() == "not a record\n"


def test_resume_reuses_every_record_as_it_was_and_reports_it_as_reused(tmp_path):
    ds, path = _five_splits(), tmp_path / "runs.jsonl"
    fresh = []
    first = run_bench(ds, ["cca", "lsh"], bits=[16], seed=[0, 1], resume=path, on_record=fresh.append)
    assert fresh == first and len(first) == 4
    assert [json.loads(line) for line in path.read_text().splitlines()] == first
    reused, told = [], []
    again = run_bench(ds, ["cca", "lsh"], bits=[16], seed=[0, 1], resume=path, on_reused=reused.append,
                      on_record=told.append)
    assert again == first and reused == first and told == []
    assert len(path.read_text().splitlines()) == 4  # nothing appended
    # without on_reused, on_record hears of the reused records too
    told.clear()
    run_bench(ds, ["lsh"], bits=[16], seed=[1], resume=path, on_record=told.append)
    assert told == [first[3]]
    # another seed is another record; the others are still reused
    more = run_bench(ds, ["lsh"], bits=[16], seed=[1, 2], resume=path)
    assert more[0] == first[3] and more[1]["seed"] == 2 and len(path.read_text().splitlines()) == 5
    # per-query scores asked for now: the records without them are redone
    pq = run_bench(ds, ["lsh"], bits=[16], seed=[1], resume=path, per_query=True)
    assert "per_query" in pq[0]["i2t"] and len(path.read_text().splitlines()) == 6
    assert pq[0]["i2t"]["map"] == first[3]["i2t"]["map"]
    back = run_bench(ds, ["lsh"], bits=[16], seed=[1], resume=path, per_query=True, on_reused=reused.append)
    assert back == pq and reused[-1] == pq[0]


# ------------------------------------------------------------ a failed run
def test_a_failed_run_is_reported_kept_out_of_the_records_and_the_others_go_on(tmp_path, monkeypatch):
    from xmodal.methods.base import TrainingDivergedError

    cls, real = methods.get("lsh"), methods.get("lsh").fit

    def fit(self, train, val=None):
        if self.bits == 32:  # one bit length diverges, the other does not
            raise TrainingDivergedError(f"lsh diverged at seed {self.random_state}")
        return real(self, train, val=val)

    monkeypatch.setattr(cls, "fit", fit)
    ds, path, failed = _five_splits(), tmp_path / "runs.jsonl", []
    recs = run_bench(ds, ["lsh", "cca"], bits=[16, 32], seed=[0, 1], resume=path, failures=failed)
    assert [(r["method"], r["bits"], r["seed"]) for r in recs] == [("lsh", 16, 0), ("lsh", 16, 1),
                                                                    ("cca", None, 0), ("cca", None, 1)]
    assert [(f["method"], f["bits"], f["seed"]) for f in failed] == [("lsh", 32, 0), ("lsh", 32, 1)]
    assert [f["error"] for f in failed] == ["lsh diverged at seed 0", "lsh diverged at seed 1"]
    assert [json.loads(line) for line in path.read_text().splitlines()] == recs
    with pytest.raises(TrainingDivergedError, match="seed 0"):  # without a failures list: raised
        run_bench(ds, ["lsh"], bits=[32])


# ------------------------------------------------------------ checks before fitting
def _two_class(train_class1: int, n_test: int = 10) -> PairedDataset:
    """Two label columns; ``train_class1`` of the 30 training items are of class 1."""
    rng = np.random.default_rng(1)
    n = 30 + n_test
    lab = np.zeros((n, 2), dtype=np.uint8)
    lab[:, 0] = 1
    lab[:train_class1, :] = [0, 1]
    lab[30:30 + n_test // 2, :] = [0, 1]
    X = lab @ rng.standard_normal((2, 6)) + rng.standard_normal((n, 6))
    Y = lab @ rng.standard_normal((2, 5)) + rng.standard_normal((n, 5))
    return PairedDataset(name="two", text_to_image=np.arange(n), n_images=n, image_features=X, text_features=Y,
                         labels=lab, label_names=["cat", "dog"],
                         splits={"train": np.arange(30), "test": np.arange(30, n)})


def test_a_training_split_of_one_class_is_caught_among_several_label_columns():
    import warnings

    with pytest.warns(UserWarning, match=r"only one class \('cat'\) in its training split"):
        run_bench(_two_class(0), ["cca"])
    with pytest.raises(DataError, match=r"sslpdp: dataset 'two' has only one class \('cat'\)"):
        run_bench(_two_class(0), ["sslpdp"], bits=[16])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one training item of the second class: two classes
        rec, = run_bench(_two_class(1), ["cca"])
    assert rec["i2t"]["map"] > 0


def test_a_test_split_of_two_images_is_scored_and_of_one_refused():
    rec, = run_bench(_two_class(5, n_test=2), ["cca"])
    assert rec["protocol"] == "classic: two/test vs itself (other modality)" and rec["i2t"]["r@1"] in (0, 50, 100)
    with pytest.raises(DataError, match="needs a 'test' split of at least 2 images"):
        run_bench(_two_class(5, n_test=1), ["cca"])


def test_settings_from_numpy_are_recorded_as_plain_json_and_the_fit_is_timed(tmp_path):
    ds, path = _five_splits(), tmp_path / "runs.jsonl"
    reg, n = np.linspace(0.01, 0.1, 4)[1], np.int64(4)  # a grid a user loops over
    t0 = time.perf_counter()
    rec, = run_bench(ds, ["cca"], params={"cca": {"reg": reg, "n_components": n}}, resume=path)
    took = time.perf_counter() - t0
    assert rec == json.loads(path.read_text()) and rec["settings"] == {"reg": float(reg), "n_components": 4}
    assert type(rec["settings"]["n_components"]) is int and rec["params"]["n_components"] == 4
    assert 0 < rec["fit_seconds"] < took


def test_non_finite_scores_fail_that_run_naming_the_direction(monkeypatch):
    cls = methods.get("cca")
    real = cls.encode_texts
    monkeypatch.setattr(cls, "encode_texts", lambda self, Y: real(self, Y) * np.nan)  # a diverged text side
    ds, failed = _five_splits(), []
    lsh, = run_bench(ds, ["cca", "lsh"], bits=[16], failures=failed)
    assert lsh["method"] == "lsh" and [f["method"] for f in failed] == ["cca"]
    assert failed[0]["error"].startswith("i2t: 50 of 50 queries have non-finite scores")


# ------------------------------------------------------------ evaluate(): block by block = whole ranking
def test_hashing_scores_block_by_block_are_the_metrics_of_the_whole_ranking(wiki, monkeypatch):
    import xmodal.evaluation.protocol as protocol
    from xmodal.metrics import (average_precision, graded_relevance, hamming_distance, hamming_pr_curve,
                                ndcg_at_k, pr_curve, precision_at_k, precision_within_radius, relevance)

    monkeypatch.setattr(protocol, "chunk_rows", lambda n_db: 100)  # 7 blocks of queries, the last short
    query, database = wiki.subset("query"), wiki.subset("database")
    m = methods.create("lsh", bits=16, random_state=0).fit(wiki.subset("train"))
    t0 = time.perf_counter()
    res = evaluate(m, query, database, map_k=(50, 5000), pk=(10, 5000), per_query=True)
    assert 0 < res["encode_seconds"] < time.perf_counter() - t0
    assert res["protocol"] == "hashing: wikipedia/query vs wikipedia/database, database codes from the hash functions"
    assert "mR" not in res
    for d, Q, D, ql, dl in (("i2t", m.encode_images(query.image_features), m.encode_texts(database.text_features),
                             query.labels, database.text_labels),
                            ("t2i", m.encode_texts(query.text_features), m.encode_images(database.image_features),
                             query.text_labels, database.labels)):
        dist, R, G = hamming_distance(Q, D), relevance(ql, dl), graded_relevance(ql, dl)
        r, ap = res[d], average_precision(relevant=R, distances=dist)
        assert r["per_query"] == {"ap": ap.tolist()} and r["map"] == pytest.approx(ap.mean(), abs=1e-12)
        assert r["map@50"] == pytest.approx(average_precision(relevant=R, k=50, distances=dist).mean(), abs=1e-12)
        assert r["p@10"] == pytest.approx(precision_at_k(relevant=R, k=10, distances=dist), abs=1e-12)
        assert r["map@5000"] == r["map"]  # k beyond the database: the whole ranking
        assert r["p@5000"] == pytest.approx(R.sum(axis=1).mean() / len(database.image_features), abs=1e-12)
        assert r["ndcg@10"] == pytest.approx(ndcg_at_k(gains=G, k=10, distances=dist), abs=1e-12)
        assert r["p@r2"] == pytest.approx(precision_within_radius(dist, R, 2), abs=1e-12)
        for key, want in (("pr_curve", pr_curve(relevant=R, distances=dist)),
                          ("hamming_pr_curve", hamming_pr_curve(dist, R, 16))):
            assert r[key].keys() == want.keys()
            for part in want:
                assert r[key][part] == pytest.approx(want[part], abs=1e-12), (d, key, part)
        assert not any(k.startswith("r@") for k in r)


def test_classic_scores_block_by_block_are_the_metrics_of_the_whole_ranking(wiki, monkeypatch):
    import xmodal.evaluation.protocol as protocol
    from xmodal.metrics import average_precision, cosine_similarity, first_hit_rank, relevance

    monkeypatch.setattr(protocol, "chunk_rows", lambda n_db: 100)
    test = wiki.subset("test")
    m = methods.create("cca").fit(wiki.subset("train"))
    res = evaluate(m, test, rk=(1, 10), per_query=True)
    qi, qt = m.encode_images(test.image_features), m.encode_texts(test.text_features)
    inst = test.text_to_image[None, :] == np.arange(test.n_images)[:, None]  # image -> its texts
    for d, S, R, I in (("i2t", cosine_similarity(qi, qt), relevance(test.labels, test.text_labels), inst),
                       ("t2i", cosine_similarity(qt, qi), relevance(test.text_labels, test.labels), inst.T)):
        r, first = res[d], first_hit_rank(S, I)
        assert r["per_query"]["ap"] == average_precision(S, R).tolist()
        for k in (1, 10):
            assert r["per_query"][f"r@{k}"] == (first < k).astype(int).tolist()
            assert r[f"r@{k}"] == pytest.approx(100 * (first < k).mean(), abs=1e-12)
    assert res["mR"] == pytest.approx(np.mean([res[d][f"r@{k}"] for d in ("i2t", "t2i") for k in (1, 10)]))
    assert res["protocol"] == "classic: wikipedia/test vs itself (other modality)"


def test_a_dataset_without_one_modalitys_features_is_refused_naming_it():
    ds = _five_splits()
    m = methods.create("cca").fit(ds.subset("train"))
    for missing in ("image_features", "text_features"):
        test = ds.subset("test")
        setattr(test, missing, None)
        with pytest.raises(DataError, match="dataset 'dcmh_toy/test' lacks features; encode it first"):
            evaluate(m, test)
        with pytest.raises(DataError, match="lacks features"):
            evaluate(m, ds.subset("query"), test)


def test_a_database_of_another_label_set_is_refused_before_encoding(monkeypatch):
    ds = _five_splits()
    m = methods.create("lsh", bits=16, random_state=0).fit(ds.subset("train"))
    database = ds.subset("database")
    database.labels = database.labels[:, :4]  # 4 classes against the queries' 5
    monkeypatch.setattr(type(m), "encode_images", lambda self, X: pytest.fail("encoded before the check"))
    with pytest.raises(DataError, match="queries 'dcmh_toy/query' have 5 classes .* database 'dcmh_toy/database' "
                                        "has 4 classes"):
        evaluate(m, ds.subset("query"), database)


def test_queries_without_a_relevant_item_give_zero_hamming_curves_not_nan():
    from xmodal.metrics import hamming_distance, hamming_pr_curve, relevance

    ds = _five_splits()
    m = methods.create("lsh", bits=16, random_state=0).fit(ds.subset("train"))
    query, database = ds.subset("query"), ds.subset("database")
    query.labels = np.zeros_like(query.labels)  # no query shares a label with the database
    res = evaluate(m, query, database)
    dist = hamming_distance(m.encode_images(query.image_features), m.encode_texts(database.text_features))
    want = hamming_pr_curve(dist, relevance(query.labels, database.text_labels), 16)
    assert res["i2t"]["hamming_pr_curve"] == want and want["precision"] == [0.0] * 17
    assert res["i2t"]["map"] == 0.0 and res["i2t"]["pr_curve"]["precision"] == [0.0] * 11


def test_learned_codes_records_keep_no_per_query_scores():
    rec, = run_bench(dcmh_toy(300, 50, 120), ["dlfh"], bits=[16], database_codes="learned")
    assert rec["database_codes"] == "learned" and rec["protocol"].endswith("database codes = learned training codes")
    assert "per_query" not in rec["i2t"] and "per_query" not in rec["t2i"] and "ndcg@10" in rec["i2t"]
    assert {"pr_curve", "hamming_pr_curve", "p@r2"} <= set(rec["i2t"]) and len(rec["t2i"]["pr_curve"]["precision"]) == 11


def test_a_dataset_without_a_train_split_is_refused_listing_its_splits():
    ds = _two_class(5)
    ds.splits = {"test": ds.splits["test"]}
    with pytest.raises(DataError, match=r"dataset 'two' has no 'train' split \(it has test \(10 images\)\)"):
        run_bench(ds, ["cca"])


def test_mean_scores_pool_numbers_and_curves_and_keep_what_cannot_be_averaged():
    from xmodal.evaluation.protocol import mean_scores

    one = {"map": 0.5, "pr_curve": {"recall": [0.0, 1.0], "precision": [1.0, 0.5]}, "note": "x"}
    assert mean_scores([one]) == ({"map": 0.5, "pr_curve": one["pr_curve"], "note": "x"}, {"map": 0.0})
    two = {"map": 0.7, "pr_curve": {"recall": [0.0, 1.0], "precision": [0.0, 0.3]}, "note": "y"}
    mean, std = mean_scores([one, two])
    assert mean["map"] == pytest.approx(0.6) and std == {"map": pytest.approx(np.std([0.5, 0.7], ddof=1))}
    assert mean["pr_curve"] == {"recall": [0.0, 1.0], "precision": [0.5, 0.4]} and mean["note"] == "x"
    # a score one run lacks is no mean (None); curves of other lengths keep the first run's
    three = {"map": None, "pr_curve": {"recall": [0.0, 0.5, 1.0], "precision": [1.0, 1.0, 1.0]}, "note": "z"}
    mean, std = mean_scores([one, three])
    assert mean["map"] is None and "map" not in std and mean["pr_curve"]["precision"] == [1.0, 0.5]


@pytest.mark.parametrize("key, value", [("map_k", 0), ("map_k", True), ("pk", 0), ("map_k", 2.5)])
def test_a_cut_off_that_is_no_positive_integer_is_refused_by_evaluate(key, value):
    ds = _five_splits()
    m = methods.create("lsh", bits=16, random_state=0).fit(ds.subset("train"))
    with pytest.raises(ValueError, match=f"{key} must be a positive integer, got {value!r}"):
        evaluate(m, ds.subset("query"), ds.subset("database"), **{key: (value,)})
