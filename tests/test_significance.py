import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import DATA
from xmodal import methods
from xmodal.cli import app
from xmodal.data import DataError
from xmodal.evaluation import evaluate
from xmodal.evaluation.significance import compare_all, compare_records, holm, paired_permutation_test

runner = CliRunner()


def test_paired_permutation_test_separates_real_differences_from_none():
    rng = np.random.default_rng(0)
    b = rng.random(200)
    same = paired_permutation_test(b, b.copy(), n_resamples=999)
    assert same["difference"] == 0 and same["p_value"] == 1.0
    better = paired_permutation_test(b + 0.1 + 0.05 * rng.standard_normal(200), b, n_resamples=999)
    assert better["difference"] == pytest.approx(0.1, abs=0.02) and better["p_value"] < 0.01
    assert 0.08 < better["ci_low"] < better["difference"] < better["ci_high"] < 0.12
    noise = paired_permutation_test(b + 0.3 * rng.standard_normal(200), b, n_resamples=999)
    assert noise["p_value"] > 0.05 and noise["ci_low"] < 0 < noise["ci_high"]
    swapped = paired_permutation_test(b, b + 0.1 + 0.05 * rng.standard_normal(200), n_resamples=999)
    assert swapped["difference"] < 0 and swapped["p_value"] < 0.01
    w = np.r_[np.full(100, 0.25 / 100), np.full(100, 0.75 / 100)]
    weighted = paired_permutation_test(np.r_[np.ones(100), np.zeros(100)], np.zeros(200), w, n_resamples=99)
    assert weighted["difference"] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="equally long"):
        paired_permutation_test([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="weights"):
        paired_permutation_test([1, 2, 3], [1, 2, 3], [1, 1])


def test_per_query_scores_add_up_to_the_reported_metrics(wikipedia):
    train, test = wikipedia.subset("train"), wikipedia.subset("test")
    res = evaluate(methods.create("cca").fit(train), test, per_query=True)
    for d in ("i2t", "t2i"):
        each = res[d]["per_query"]
        assert len(each["ap"]) == test.n_images
        assert np.mean(each["ap"]) == pytest.approx(res[d]["map"])
        for k in (1, 5, 10):
            assert set(each[f"r@{k}"]) <= {0, 1}
            assert 100 * np.mean(each[f"r@{k}"]) == pytest.approx(res[d][f"r@{k}"])
    assert "per_query" not in evaluate(methods.create("cca").fit(train), test)["i2t"]


def test_compare_records_mr_weights_both_directions_by_their_share():
    a = {"method": "a", "i2t": {"per_query": {"r@1": [1, 0], "r@5": [1, 1], "r@10": [1, 1]}},
         "t2i": {"per_query": {"r@1": [0, 0, 0, 1], "r@5": [1, 0, 0, 1], "r@10": [1, 1, 0, 1]}}}
    b = {"method": "b", "i2t": {"per_query": {k: [0, 0] for k in ("r@1", "r@5", "r@10")}},
         "t2i": {"per_query": {k: [0, 0, 0, 0] for k in ("r@1", "r@5", "r@10")}}}
    res = compare_records(a, b, "mR", n_resamples=99)
    mr = np.mean([50, 100, 100, 25, 50, 75])  # the six Recall@K figures of a, in percent
    assert res["both"]["a"] == pytest.approx(mr) and res["both"]["b"] == 0
    assert res["both"]["difference"] == pytest.approx(mr) and res["both"]["n_queries"] == 6
    with pytest.raises(DataError, match="record 'a': no per-query 'map' scores for i2t; it has r@1, r@5, r@10, mR"):
        compare_records(a, b, "map")  # scored per query, but without labels: say what it has
    with pytest.raises(DataError, match=r"record 'a': no per-query .* scores for i2t; re-run the benchmark with per-query "
                                         r"scores \(xmodal bench --per-query; in Python run_bench\(\.\.\., per_query=True\)\)"):
        compare_records({"method": "a", "i2t": {}}, b, "map")
    with pytest.raises(ValueError, match="expected map, mR or r@K"):
        compare_records(a, b, "ndcg")


def test_holm_adjustment():
    # Holm (1979): sorted p times (m, m-1, ...), made monotone, capped at 1
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.2, 0.6]) == pytest.approx([0.4, 0.6]) and holm([0.9, 0.8]) == [1.0, 1.0]


def test_cli_compare(wikipedia, tmp_path):
    log = tmp_path / "runs.jsonl"
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "cca,scm", "--per-query",
                              "--quiet", "--data-dir", str(DATA), "--resume", str(log)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(log), "scm", "cca", "--resamples", "999", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["metric"] == "map" and out["a"] == "scm"
    for d in ("i2t", "t2i"):  # SCM's published gain over CCA on these features is real
        assert out[d]["difference"] > 0.02 and out[d]["p_value"] < 0.01 and out[d]["n_queries"] == 693
        assert 0 < out[d]["ci_low"] < out[d]["difference"] < out[d]["ci_high"]
    res = runner.invoke(app, ["compare", str(log), "scm", "cca", "--metric", "mR", "--resamples", "99"])
    assert res.exit_code == 0 and "both" in res.output and "p = " in res.output and "95% CI [" in res.output
    res = runner.invoke(app, ["compare", str(log), "scm", "nope"])
    assert res.exit_code == 2 and "no record for method 'nope'" in res.output
    res = runner.invoke(app, ["compare", str(log), "scm", "scm"])
    assert res.exit_code == 2 and "two or more different methods" in res.output
    # several methods: every pair, and p-values adjusted over all the tests (Holm)
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "sm", "--per-query",
                              "--quiet", "--data-dir", str(DATA), "--resume", str(log)])
    res = runner.invoke(app, ["compare", str(log), "scm", "cca", "sm", "--resamples", "999", "--json"])
    assert res.exit_code == 0, res.output
    pairs = json.loads(res.output)
    assert [(p["a"], p["b"]) for p in pairs] == [("scm", "cca"), ("scm", "sm"), ("cca", "sm")]
    ps = [p[d]["p_value"] for p in pairs for d in ("i2t", "t2i")]
    holm_ps = [p[d]["p_holm"] for p in pairs for d in ("i2t", "t2i")]
    assert all(h >= q for h, q in zip(holm_ps, ps)) and min(holm_ps) == pytest.approx(6 * min(ps))
    assert pairs[0]["i2t"]["difference"] == pytest.approx(out["i2t"]["difference"])
    res = runner.invoke(app, ["compare", str(log), "scm", "cca", "sm", "--resamples", "99"])
    assert res.exit_code == 0 and res.output.count("Holm p = ") == 6
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps({k: v for k, v in json.loads(line).items()}
                                        | {"i2t": {"map": 0.1}, "t2i": {"map": 0.1}}) + "\n"
                             for line in log.read_text().splitlines()))
    res = runner.invoke(app, ["compare", str(plain), "scm", "cca"])
    assert res.exit_code == 2 and "--per-query" in res.output
    torn = tmp_path / "torn.json"
    torn.write_text("[{")
    res = runner.invoke(app, ["compare", str(torn), "scm", "cca"])
    assert res.exit_code == 2 and f"{torn}: not a records file" in res.output
    res = runner.invoke(app, ["compare", str(tmp_path / "missing.jsonl"), "scm", "cca"])
    assert res.exit_code == 2 and "no such records file" in res.output


def test_cli_compare_hashing_records_by_bit_length(wikipedia, tmp_path):
    log = tmp_path / "hash.jsonl"
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "lsh,cca_itq", "--bits", "16,32",
                              "--per-query", "--quiet", "--data-dir", str(DATA), "--resume", str(log)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["compare", str(log), "cca_itq", "lsh", "--bits", "32", "--resamples", "999", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["i2t"]["p_value"] < 0.01 and out["t2i"]["ci_low"] > 0.05  # CCA-ITQ is far above chance
    res = runner.invoke(app, ["compare", str(log), "cca_itq", "lsh"])
    assert res.exit_code == 2 and "pass --bits" in res.output


def test_a_folded_result_is_not_paired_with_an_unfolded_one_from_python():
    from xmodal import methods
    from xmodal.data import DataError
    from xmodal.evaluation import evaluate, evaluate_folds
    from xmodal.evaluation.significance import compare_records
    from xmodal.methods.checks import toy_dataset

    ds = toy_dataset(n_images=120)
    m = methods.create("cca", n_components=2).fit(ds.subset("train"))
    test = ds.subset("test")
    plain, folded = evaluate(m, test, per_query=True), evaluate_folds(m, test, 2, per_query=True)
    with pytest.raises(DataError, match="records differ in test_folds: 1 .* vs 2"):
        compare_records(plain, folded)
    assert compare_records(folded, evaluate_folds(m, test, 2, per_query=True))["i2t"]["p_value"] == 1.0


def test_a_record_without_per_query_scores_names_the_metric_as_asked():
    # records keep AP per query under 'ap'; the message said "no per-query 'ap' scores" to a
    # user who asked for --metric map
    from xmodal.evaluation.significance import _per_query

    with pytest.raises(DataError, match="no per-query 'map' scores for i2t; re-run"):
        _per_query({"method": "cca", "i2t": {"map": 0.2}}, "i2t", "ap")
    with pytest.raises(DataError, match="no per-query 'map' scores for i2t; it has r@1"):
        _per_query({"method": "cca", "i2t": {"per_query": {"r@1": [1, 0]}}}, "i2t", "ap")


def test_recall_asked_of_hashing_records_says_they_hold_map_only():
    """mR and Recall@K need instance pairs (the classic protocol); hashing records hold
    MAP-type scores: the message says so and names the metric there is, not 'no r@1 for i2t'."""
    hashed = {"method": "lsh", "bits": 16, "protocol": "hashing: d/query vs d/database, database codes "
              "from the hash functions", "i2t": {"map": 0.3, "per_query": {"ap": [0.2, 0.4]}},
              "t2i": {"map": 0.3, "per_query": {"ap": [0.2, 0.4]}}}
    other = {**hashed, "method": "cvh"}
    for metric, named in (("mR", "mR"), ("R@5", "r@5")):
        with pytest.raises(DataError) as err:
            compare_records(hashed, other, metric=metric, n_resamples=9, progress=False)
        msg = str(err.value)
        assert f"no per-query {named!r} scores for i2t" in msg and "need instance pairs" in msg, msg
        assert "hashing-protocol record" in msg and "MAP-type scores only (map)" in msg, msg
        assert "'r@1'" not in msg or named != "mR", msg
    assert compare_records(hashed, other, n_resamples=9, progress=False)["i2t"]["p_value"] == 1.0


def _pinned_records():
    rng = np.random.default_rng(7)
    n = 400

    def rec(name, shift):
        return {"method": name, **{d: {"per_query": {
            "ap": np.clip(rng.random(n) + shift, 0, 1).tolist(),
            **{f"r@{k}": (rng.random(n) < 0.3 + 0.05 * k / 10 + shift).astype(int).tolist() for k in (1, 5, 10)}}}
            for d in ("i2t", "t2i")}}

    return rec("a", 0.03), rec("b", 0.0)


def test_results_are_those_of_scipys_permutation_test_before_the_fast_null():
    """Figures computed with scipy.stats.permutation_test itself (before the sign flips were
    drawn without its Python loop over queries): the same seed gives the same numbers, exactly."""
    a, b = _pinned_records()
    res = compare_records(a, b, "map", n_resamples=999, seed=3, progress=False)
    assert res["i2t"] == {"a": 0.5337580623931414, "b": 0.5127476737721409, "difference": 0.02101038862100038,
                          "p_value": 0.276, "ci_low": -0.019517311935103886, "ci_high": 0.06282664015360333,
                          "n_queries": 400}
    assert res["t2i"] == {"a": 0.5349314107342279, "b": 0.5067784981829476, "difference": 0.028152912551280242,
                          "p_value": 0.178, "ci_low": -0.012120600442141615, "ci_high": 0.0673854409447093,
                          "n_queries": 400}
    res = compare_records(a, b, "mR", n_resamples=999, seed=0, progress=False)
    assert res["both"] == {"a": 35.666666666666664, "b": 35.125, "difference": 0.5416666666666666,
                           "p_value": 0.686, "ci_low": -2.0833333333333335, "ci_high": 3.2958333333333294,
                           "n_queries": 800}
    # five queries, 32 sign flips: scipy's exact test
    assert paired_permutation_test([0.5, 0.2, 0.9, 0.4, 0.7], [0.1, 0.3, 0.6, 0.4, 0.2], n_resamples=999) == \
        {"difference": 0.22000000000000003, "p_value": 0.25, "ci_low": 0.02, "ci_high": 0.42000000000000004}


@pytest.mark.parametrize("n, n_resamples, seed", [(20, 999, 0), (300, 999, 1), (2500, 301, 5)])
def test_the_sign_flip_null_is_scipys_bit_for_bit_whatever_the_batch(monkeypatch, n, n_resamples, seed):
    from scipy.stats import permutation_test

    from xmodal.evaluation import significance

    rng = np.random.default_rng(n)
    x, y = rng.random(n) / n, rng.random(n) / n
    y[::3] = x[::3]  # ties: sums equal in theory, the tolerance decides
    ref = permutation_test((x, y), lambda a, b, axis: np.sum(a - b, axis=axis), permutation_type="samples",
                           vectorized=True, n_resamples=n_resamples, alternative="two-sided", random_state=seed)
    monkeypatch.setattr(significance, "RESAMPLE_BYTES", 16 * n * 7)  # 7 resamples a batch
    assert np.array_equal(significance._sign_flip_null(x, y, n_resamples, seed), ref.null_distribution)
    assert significance._sign_flip_test(x, y, n_resamples, seed, 50) == ref.pvalue


def test_progress_counts_every_resample_and_shows_only_when_asked(capsys, monkeypatch):
    from xmodal.evaluation import significance

    monkeypatch.setattr(significance, "RESAMPLE_BYTES", 8 * 300 * 100)  # batches of 50 and 100 resamples
    done: list[int] = []
    rng = np.random.default_rng(0)
    for n in (5, 300):  # scipy's exact test, then the drawn sign flips
        done.clear()
        paired_permutation_test(rng.random(n), rng.random(n), n_resamples=999, on_progress=done.append)
        assert sum(done) == 2 * 999 and (n == 5 or len(done) == 20 + 10)  # batch by batch
    done.clear()
    paired_permutation_test(rng.random(300), rng.random(300), n_resamples=999, strata=np.arange(300) % 2,
                            on_progress=done.append)
    assert sum(done) == 2 * 999
    a, b = _pinned_records()
    capsys.readouterr()
    compare_records(a, b, "map", n_resamples=99, progress=False)
    compare_records(a, b, "map", n_resamples=99)  # None: stderr is no terminal here
    assert capsys.readouterr().err == ""
    compare_records(a, b, "mR", n_resamples=99, progress=True)
    err = capsys.readouterr().err
    assert "resampling" in err and "198" in err  # one test (mR): its 99 sign flips and 99 bootstraps
    from xmodal.evaluation.significance import compare_all

    compare_all({"a": a, "b": b, "c": b}, "map", n_resamples=99, progress=True)
    assert "1.19k" in capsys.readouterr().err  # 3 pairs x 2 directions x (99 + 99)


def test_cli_compare_bar_is_off_with_json_or_quiet(tmp_path, monkeypatch):
    from xmodal.evaluation import significance

    seen: list = []
    real = significance.compare_all
    monkeypatch.setattr(significance, "compare_all", lambda *a, **kw: seen.append(kw["progress"]) or real(*a, **kw))
    a, b = _pinned_records()
    path = tmp_path / "runs.json"
    path.write_text(json.dumps([r | {"dataset": "toy", "bits": None} for r in (a, b)]))
    for extra, want in (([], None), (["--json"], False), (["--quiet"], False), (["-q", "--json"], False)):
        res = runner.invoke(app, ["compare", str(path), "a", "b", "--resamples", "99", *extra])
        assert res.exit_code == 0, res.output
        assert seen[-1] is want  # None: a bar only where stderr is a terminal
    assert "resampling" not in res.output


@pytest.mark.parametrize("asked, named", [("MAP", "map"), ("Map", "map"), ("mr", "mR"), ("MR", "mR"),
                                          ("R@5", "r@5")])
def test_compare_takes_metric_names_in_any_case_from_python_too(asked, named):
    # `xmodal compare --metric` took any case; compare_records / compare_all refused 'MAP'
    from xmodal.evaluation.significance import compare_all
    from xmodal.methods.checks import toy_dataset

    ds = toy_dataset(n_images=80)
    test = ds.subset("test")
    a, b = (evaluate(methods.create("cca", n_components=k).fit(ds.subset("train")), test, per_query=True)
            for k in (2, 4))
    got = compare_records(a, b, asked, n_resamples=99)
    assert got == compare_records(a, b, named, n_resamples=99) and got["metric"] == named
    assert compare_all({"a": a, "b": b}, asked, n_resamples=99)[0]["metric"] == named
    with pytest.raises(ValueError, match="metric 'p@10': expected map, mR or r@K"):
        compare_records(a, b, "p@10")


@pytest.mark.parametrize("n, n_resamples", [(10, 1024), (10, 1023), (6, 64)])
def test_the_exact_test_starts_where_scipys_does(n, n_resamples):
    # scipy enumerates every sign flip once n_resamples reaches 2 ** n (exactly 2 ** n included)
    from scipy.stats import permutation_test

    from xmodal.evaluation import significance

    rng = np.random.default_rng(n)
    x, y = rng.random(n), rng.random(n)
    ref = permutation_test((x, y), lambda a, b, axis: np.sum(a - b, axis=axis), permutation_type="samples",
                           vectorized=True, n_resamples=n_resamples, alternative="two-sided", random_state=0)
    assert significance._sign_flip_test(x, y, n_resamples, 0, 50) == ref.pvalue


def test_compare_all_defaults_are_compare_records_defaults():
    a, b = _pinned_records()
    pair = compare_all({"A": a, "B": b}, progress=False)[0]
    one = compare_records(a, b, progress=False)
    for d in ("i2t", "t2i"):
        assert {k: v for k, v in pair[d].items() if k != "p_holm"} == one[d]


def test_the_two_sided_test_and_interval_are_symmetric_in_a_and_b():
    # swapping A and B negates every sign-flip sum exactly: the same p-value, the interval mirrored
    rng = np.random.default_rng(11)
    for n in (9, 200):  # scipy's exact test, then the drawn sign flips
        a, b = rng.random(n), rng.random(n) * 0.9
        ab, ba = (paired_permutation_test(x, y, n_resamples=999, seed=2) for x, y in ((a, b), (b, a)))
        assert ba["p_value"] == ab["p_value"] and ba["difference"] == -ab["difference"]
        assert (ba["ci_low"], ba["ci_high"]) == pytest.approx((-ab["ci_high"], -ab["ci_low"]), rel=1e-9)
    a = np.linspace(0.5, 1.0, 200)
    assert paired_permutation_test(a - 0.4, a, n_resamples=99)["p_value"] == pytest.approx(2 / 100)


def test_the_default_resamples_give_the_smallest_p_value_the_docs_quote():
    # docs/results.md: "9999 sign flips; 0.0002 is the smallest value 9999 flips can give"
    a = np.linspace(0.5, 1.0, 100)
    assert paired_permutation_test(a, a - 0.4)["p_value"] == pytest.approx(2 / 10000)


def test_sums_within_scipys_tolerance_of_the_observed_one_count_as_ties(monkeypatch):
    """scipy.stats.permutation_test counts a null sum as at least as extreme when it is within
    100 machine epsilons (relative) of the observed one; the fast null keeps that rule."""
    from xmodal.evaluation import significance

    eps = np.finfo(np.float64).eps
    x, y = np.full(64, 1 / 16), np.zeros(64)  # observed sum 4, tolerance 400 eps
    edge = [4 - 400 * eps, 4 + 400 * eps, -5.0, -6.0, -7.0, -8.0, -9.0, -10.0, -11.0]
    for sign in (1, -1):  # the edge above, then below a negative observed sum
        null = sign * np.array(edge)
        monkeypatch.setattr(significance, "_sign_flip_null", lambda *args, **kw: null)
        got = significance._sign_flip_test(sign * x, sign * y, len(null), 0, 50)
        assert got == pytest.approx(2 * (2 + 1) / (9 + 1))  # both edge sums tie with 4 (or -4)


def test_a_memory_budget_below_one_resample_still_resamples_one_at_a_time(monkeypatch):
    from xmodal.evaluation import significance

    rng = np.random.default_rng(4)
    a, b = rng.random(100), rng.random(100)
    whole = paired_permutation_test(a, b, n_resamples=99, seed=1)
    monkeypatch.setattr(significance, "RESAMPLE_BYTES", 8)  # less than one resample of 100 queries
    assert significance.resample_batch(100) == 1
    assert paired_permutation_test(a, b, n_resamples=99, seed=1) == whole


def test_two_queries_are_enough_and_one_is_refused():
    # two queries, four sign flips of (0.4, 0.05): sums +-0.45 and +-0.35; half are as extreme
    got = paired_permutation_test([0.9, 0.6], [0.1, 0.5])
    assert got["p_value"] == 0.5 and got["difference"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match=r"\(>= 2 queries\)"):
        paired_permutation_test([0.9], [0.1])


def test_records_without_recall_that_are_not_hashing_ones_are_named_plainly():
    classic = {"method": "m", "protocol": "classic: toy/test vs itself (other modality)",
               "i2t": {"per_query": {"ap": [0.2, 0.4]}}, "t2i": {"per_query": {"ap": [0.2, 0.4]}}}
    with pytest.raises(DataError, match=r"and it holds MAP-type scores only \(map\)"):
        compare_records(classic, {**classic, "method": "n"}, metric="mR", n_resamples=9)
    # Recall@K held, only not this K: what there is, not the MAP-only message
    recalled = {**classic, "i2t": {"per_query": {"ap": [0.2, 0.4], "r@1": [0, 1], "r@5": [1, 1], "r@10": [1, 1]}}}
    with pytest.raises(DataError, match=r"no per-query 'r@20' scores for i2t; it has map, r@1, r@5, r@10, mR$"):
        compare_records(recalled, {**recalled, "method": "n"}, metric="r@20", n_resamples=9)


def test_empty_data_options_and_none_recorded_are_the_same_test_set():
    rec = {"method": "m", "dataset": "toy", "i2t": {"per_query": {"ap": [0.2, 0.4, 0.9]}},
           "t2i": {"per_query": {"ap": [0.2, 0.4, 0.9]}}}
    got = compare_records({**rec, "data_options": {}}, {**rec, "method": "n"}, n_resamples=9)
    assert got["i2t"]["p_value"] == 1.0
    given = {**rec, "data_options": {"split": "official"}}
    for a, b in ((given, rec), (rec, given)):  # options on either side only: another test set
        with pytest.raises(DataError, match="records differ in data_options"):
            compare_records(a, {**b, "method": "n"}, n_resamples=9)


def test_recall_at_k_is_compared_in_percent_per_direction():
    hits_a, hits_b = [1, 1, 0, 1], [0, 1, 0, 0]
    rec = {d: {"per_query": {"r@5": hits_a}} for d in ("i2t", "t2i")}
    other = {d: {"per_query": {"r@5": hits_b}} for d in ("i2t", "t2i")}
    got = compare_records({"method": "a", **rec}, {"method": "b", **other}, "R@5", n_resamples=99)
    assert got["metric"] == "r@5" and got["i2t"]["a"] == 75.0 and got["i2t"]["b"] == 25.0
    assert got["t2i"]["difference"] == pytest.approx(50.0) and got["t2i"]["n_queries"] == 4
