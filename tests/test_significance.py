import json

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import DATA
from xmodal import methods
from xmodal.cli import app
from xmodal.data import DataError
from xmodal.evaluation import evaluate
from xmodal.evaluation.significance import compare_records, holm, paired_permutation_test

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
                                         r"scores \(xmodal bench --per-query\)"):
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
