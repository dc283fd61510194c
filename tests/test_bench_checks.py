"""What a researcher reproducing a table runs into: `xmodal bench` refusing bad settings before any
encoding, --resume never reusing records of another dataset file, records that say how they were
made, and `xmodal compare` refusing records of different test sets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import labelled_photos
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.data import DataError
from xmodal.evaluation.bench import run_bench
from xmodal.methods import ParameterError

runner = CliRunner()


def _pairs(path, n_per_class=12, classes=("a", "b", "c"), split=True, labels=True, seed=0):
    """A small pairs file (the images need not exist: the encoders are replaced below)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in classes:
        for i in range(n_per_class):
            row = {"image": f"img/{c}{i}.jpg", "text": f"a {c} photo number {i} {rng.integers(1000)}"}
            if labels:
                row["label"] = c
            if split:
                row["split"] = "test" if i < 3 else "train"
            rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fake_encoders(monkeypatch):
    """Features from the labels plus noise, so bench runs in milliseconds; counts the calls."""
    import xmodal.encoders as enc

    calls = []

    def encode_dataset(ds, image_encoder=None, text_encoder=None, **kw):
        calls.append((ds.name, image_encoder, text_encoder))
        rng = np.random.default_rng(len(ds.texts[0]))
        lab = ds.labels if ds.labels is not None else np.zeros((ds.n_images, 1))
        X = np.hstack([lab * 2.0, rng.normal(size=(ds.n_images, 6))])
        Y = np.hstack([lab[ds.text_to_image] * 2.0, rng.normal(size=(ds.n_texts, 5))])
        return ds.with_features(X.astype(np.float32), Y.astype(np.float32))

    monkeypatch.setattr(enc, "encode_dataset", encode_dataset)
    return calls


def _bench(*args):
    return runner.invoke(app, ["bench", "--quiet", *args])


# ---------------------------------------------------------------- refused before any encoding
@pytest.mark.parametrize("args, message", [
    (["--methods", "cca", "--set", "cca.reg=-1"], "reg=-1"),
    (["--methods", "cca", "--set", "cca.nope=1"], "unknown parameter nope"),
    (["--methods", "lsh", "--bits", "12"], "bits=12"),
    (["--methods", "lsh", "--bits", "16", "--set", "lsh.bits=64"], "--bits"),
    (["--methods", "lsh", "--seeds", "0,1", "--set", "lsh.random_state=5"], "--seed"),
    (["--methods", "cca", "--set", "scm.reg=1"], "'scm', which is not among the methods"),
    (["--methods", "cca,cca"], "more than once"),
    (["--methods", " , "], "no method"),
    (["--methods", "scm_seq", "--bits", "16", "--database-codes", "learned", "--per-query"], "per-query"),
    (["--methods", "lsh", "--bits", ","], "no bit length"),
    (["--methods", "lsh", "--bits", "16,32,16"], "more than once"),
    # worded for the command line too (it said test_folds, run_bench's name)
    (["--methods", "cca,lsh", "--bits", "16", "--test-folds", "5"],
     "scoring on 5 test folds applies to the classic protocol only; lsh uses the hashing protocol"),
])
def test_bad_settings_are_refused_before_encoding(tmp_path, fake_encoders, args, message):
    pairs = _pairs(tmp_path / "p.jsonl")
    res = _bench("--dataset", str(pairs), "--image-encoder", "x", "--text-encoder", "y", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert fake_encoders == []  # nothing was encoded before the refusal


def test_unknown_method_message_is_not_a_quoted_repr(tmp_path, fake_encoders):
    res = _bench("--dataset", str(_pairs(tmp_path / "p.jsonl")), "--methods", "cca,foo")
    assert res.exit_code == 2
    assert "error: unknown method 'foo'" in res.output
    assert fake_encoders == []


def test_supervised_method_without_labels_fails_before_encoding(tmp_path, fake_encoders):
    pairs = _pairs(tmp_path / "nolabels.jsonl", labels=False)
    res = _bench("--dataset", str(pairs), "--methods", "cca,scm", "--image-encoder", "x", "--text-encoder", "y")
    assert res.exit_code == 2, res.output
    assert "scm" in res.output and "no labels" in res.output
    assert fake_encoders == []


def test_single_class_dataset_is_a_clear_error_for_supervised_methods(tmp_path, fake_encoders):
    pairs = _pairs(tmp_path / "one.jsonl", classes=("only",))
    res = _bench("--dataset", str(pairs), "--methods", "scm", "--image-encoder", "x", "--text-encoder", "y")
    assert res.exit_code == 2, res.output
    assert "one class" in res.output and "'only'" in res.output
    assert "Traceback" not in res.output and fake_encoders == []
    # unsupervised methods still run; class mAP is then trivially 1, which the run says
    with pytest.warns(UserWarning, match="one class"):
        recs = run_bench(str(pairs), ["cca"], image_encoder="x", text_encoder="y")
    assert recs[0]["i2t"]["map"] == pytest.approx(1.0)


@pytest.mark.parametrize("splits, message", [
    ({"test": "val"}, "needs a 'test' split"),  # train and val only
    ({"test": "train"}, "needs a 'test' split"),
    ({"train": "test"}, "no 'train' split"),
])
def test_pairs_file_without_a_split_to_score_on(tmp_path, fake_encoders, splits, message):
    pairs = _pairs(tmp_path / "p.jsonl")
    rows = [json.loads(line) for line in pairs.read_text().splitlines()]
    pairs.write_text("".join(json.dumps({**r, "split": splits.get(r["split"], r["split"])}) + "\n" for r in rows))
    res = _bench("--dataset", str(pairs), "--methods", "cca", "--image-encoder", "x", "--text-encoder", "y")
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output and fake_encoders == []


def test_tiny_pairs_file_says_what_is_missing(tmp_path, fake_encoders):
    pairs = _pairs(tmp_path / "tiny.jsonl", n_per_class=1, classes=("a", "b"), split=False)
    res = _bench("--dataset", str(pairs), "--methods", "cca", "--image-encoder", "x", "--text-encoder", "y")
    assert res.exit_code == 2, res.output
    assert "needs a 'test' split of at least 2 images" in res.output and "folds" not in res.output


def test_warnings_print_as_one_line(tmp_path, fake_encoders):
    pairs = _pairs(tmp_path / "one.jsonl", classes=("only",))
    res = _bench("--dataset", str(pairs), "--methods", "cca", "--image-encoder", "x", "--text-encoder", "y")
    assert res.exit_code == 0, res.output
    assert "warning: dataset 'one' has only one class" in res.output
    assert "run_bench(" not in res.output  # not the source line warnings.warn would show


def test_pairs_file_with_and_without_split_column(tmp_path, fake_encoders):
    with_split = run_bench(str(_pairs(tmp_path / "s.jsonl")), ["cca"], image_encoder="x", text_encoder="y")
    assert with_split[0]["protocol"].startswith("classic: s/test")
    without = run_bench(str(_pairs(tmp_path / "n.jsonl", split=False)), ["cca", "scm"],
                        image_encoder="x", text_encoder="y")
    assert [r["method"] for r in without] == ["cca", "scm"]
    assert all(0 < r["t2i"]["map"] <= 1 for r in without)


def test_csv_with_quoted_commas(tmp_path, fake_encoders):
    csv = tmp_path / "q.csv"
    lines = ["image,text,label,split"]
    for c in "ab":
        for i in range(8):
            lines.append(f'img/{c}{i}.jpg,"a {c}, with ""commas"", {i}",{c},{"test" if i < 2 else "train"}')
    csv.write_text("\n".join(lines) + "\n")
    from xmodal.data import load_dataset

    ds = load_dataset(str(csv))
    assert ds.texts[0] == 'a a, with "commas", 0' and ds.n_images == 16
    recs = run_bench(str(csv), ["cca"], image_encoder="x", text_encoder="y")
    assert recs[0]["dataset"] == "q"


# ---------------------------------------------------------------- --resume and the records
def test_resume_never_reuses_records_of_another_pairs_file_with_the_same_name(tmp_path, fake_encoders):
    log = tmp_path / "runs.jsonl"
    a = _pairs(tmp_path / "one" / "pairs.jsonl", seed=0)
    b = _pairs(tmp_path / "two" / "pairs.jsonl", classes=("x", "y"), seed=1)
    first = run_bench(str(a), ["cca"], image_encoder="x", text_encoder="y", resume=log)
    again = run_bench(str(a), ["cca"], image_encoder="x", text_encoder="y", resume=log)
    assert again == first and len(log.read_text().splitlines()) == 1  # same file: reused
    other = run_bench(str(b), ["cca"], image_encoder="x", text_encoder="y", resume=log)
    assert len(log.read_text().splitlines()) == 2  # same stem, other content: recomputed
    assert other[0]["dataset_sha256"] != first[0]["dataset_sha256"]
    # an edited file is another dataset too
    _pairs(a, seed=5)
    run_bench(str(a), ["cca"], image_encoder="x", text_encoder="y", resume=log)
    assert len(log.read_text().splitlines()) == 3


def test_resume_recomputes_a_changed_setting(tmp_path, wikipedia):
    log = tmp_path / "runs.jsonl"
    base = ["--dataset", "wikipedia", "--methods", "cca", "--resume", str(log)]
    assert _bench(*base).exit_code == 0
    assert _bench(*base).exit_code == 0
    assert len(log.read_text().splitlines()) == 1
    assert _bench(*base, "--set", "cca.reg=0.1").exit_code == 0
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["params"]["reg"] for r in recs] == [0.001, 0.1]


def test_resume_redoes_a_record_whose_parameters_differ_from_the_defaults_now(tmp_path, wikipedia,
                                                                              monkeypatch):
    from xmodal import methods

    log = tmp_path / "runs.jsonl"
    first = run_bench(wikipedia, ["cca"], resume=log)[0]
    assert first["params"]["reg"] == 0.001
    # the method's default changes (a new release): the stored record no longer describes it
    cls = methods.get("cca")
    defaults = list(cls.__init__.__defaults__)
    names = [p for p in cls._param_names()]
    defaults[names.index("reg") - (len(names) - len(defaults))] = 0.5
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))
    again = run_bench(wikipedia, ["cca"], resume=log)[0]
    assert again["params"]["reg"] == 0.5 and again["i2t"]["map"] != first["i2t"]["map"]
    assert len(log.read_text().splitlines()) == 2
    # the newer record is the one reused from then on
    assert run_bench(wikipedia, ["cca"], resume=log)[0]["params"]["reg"] == 0.5
    assert len(log.read_text().splitlines()) == 2


def test_resume_redoes_a_record_made_on_data_the_loader_reads_differently(tmp_path, wikipedia):
    import dataclasses

    log = tmp_path / "runs.jsonl"
    first = run_bench(wikipedia, ["cca"], resume=log)[0]
    assert len(first["data_digest"]) == 64
    assert run_bench(wikipedia, ["cca"], resume=log)[0] == first  # same data: reused
    # the same name and files, read differently (a loader that now relabels one pair)
    labels = wikipedia.labels.copy()
    labels[0] = np.roll(labels[0], 1)
    changed = dataclasses.replace(wikipedia, labels=labels)
    again = run_bench(changed, ["cca"], resume=log)[0]
    assert again["data_digest"] != first["data_digest"] and len(log.read_text().splitlines()) == 2
    # a record made before data_digest was kept is taken as it is
    old = dict(first)
    del old["data_digest"]
    log.write_text(json.dumps(old) + "\n")
    assert run_bench(changed, ["cca"], resume=log)[0] == old
    assert len(log.read_text().splitlines()) == 1


def test_compare_after_adding_per_query_to_a_resumed_run(tmp_path, wikipedia):
    """The documented flow: a run, then the same run with --per-query on the same --resume file
    (which redoes the records and appends them), then xmodal compare on that file."""
    log = tmp_path / "runs.jsonl"
    base = ["--dataset", "wikipedia", "--methods", "cca,pls", "--resume", str(log)]
    assert _bench(*base).exit_code == 0
    assert _bench(*base, "--per-query").exit_code == 0
    assert len(log.read_text().splitlines()) == 4
    res = runner.invoke(app, ["compare", str(log), "cca", "pls", "--resamples", "99", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["i2t"]["a"] == pytest.approx(0.2412, abs=1e-4) and out["i2t"]["n_queries"] == 693
    from xmodal.evaluation.bench import read_jsonl, summarize_seeds

    merged = summarize_seeds(read_jsonl(log))
    assert [r["method"] for r in merged] == ["cca", "pls"] and all("seeds" not in r for r in merged)


def test_records_say_how_they_were_made(tmp_path, wikipedia):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    res = runner.invoke(app, ["bench", "--dataset", "wikipedia", "--methods", "cca", "--json", str(out),
                              "--markdown", str(md)])
    assert res.exit_code == 0, res.output
    rec = json.loads(out.read_text())[0]
    assert rec["command"] == f"xmodal bench --dataset wikipedia --methods cca --json {out} --markdown {md}"
    import sklearn

    import xmodal
    assert rec["versions"]["xmodal"] == xmodal.__version__
    assert rec["versions"]["numpy"] == np.__version__
    assert rec["versions"]["scikit-learn"] == sklearn.__version__
    assert "python" in rec["versions"]
    from threadpoolctl import threadpool_info

    from xmodal.methods._torch import default_threads
    # results repeat bit for bit for one thread count only: each record says which
    assert rec["threads"]["torch"] == default_threads()
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    assert rec["threads"]["blas"] == max(blas)
    text = md.read_text()
    assert text.startswith("| method | bits |")
    assert "xmodal bench" in text and f"xmodal {xmodal.__version__}" in text
    from xmodal.evaluation.bench import provenance

    older = dict(rec, versions={**rec["versions"], "xmodal": "0.0.1"})
    assert "xmodal 0.0.1" in provenance("xmodal bench", [older])  # a resumed record's, not ours
    assert "versions differ" in provenance("xmodal bench", [rec, older])
    assert "versions not recorded" in provenance("xmodal bench", [{k: v for k, v in rec.items() if k != "versions"}])


def test_json_records_are_strict_json(tmp_path):
    from xmodal.evaluation.bench import write_json

    out = tmp_path / "r.json"
    write_json([{"method": "m", "i2t": {"map": float("nan")}, "t2i": {"map": np.float32(0.5)}}], out)
    rec = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert rec[0]["i2t"]["map"] is None and rec[0]["t2i"]["map"] == 0.5


# ---------------------------------------------------------------- xmodal compare
def _rec(method, dataset="wikipedia", protocol="classic: wikipedia/test vs itself (other modality)",
         n=20, seed=0, **extra):
    rng = np.random.default_rng(seed)
    pq = {"ap": rng.random(n).tolist(), **{f"r@{k}": rng.integers(0, 2, n).tolist() for k in (1, 5, 10)}}
    d = {"map": float(np.mean(pq["ap"])), "per_query": pq}
    return {"dataset": dataset, "method": method, "bits": None, "seed": 0, "settings": {},
            "protocol": protocol, "i2t": dict(d), "t2i": dict(d), "fit_seconds": 0.0, **extra}


@pytest.mark.parametrize("other, word", [
    (dict(dataset="ucm_captions", protocol="classic: ucm_captions/test vs itself (other modality)"), "dataset"),
    (dict(protocol="hashing: wikipedia/query vs wikipedia/database, database codes from the hash functions"),
     "protocol"),
    (dict(test_folds=5), "test_folds"),
    (dict(dataset_sha256="ab" * 32), "dataset file"),
])
def test_compare_refuses_records_of_different_test_sets(tmp_path, other, word):
    path = tmp_path / "r.jsonl"
    a = _rec("cca", dataset_sha256="cd" * 32) if word == "dataset file" else _rec("cca")
    path.write_text(json.dumps(a) + "\n" + json.dumps(_rec("scm", seed=1, **other)) + "\n")
    res = runner.invoke(app, ["compare", str(path), "cca", "scm", "--resamples", "99"])
    assert res.exit_code == 2, res.output
    assert word in res.output and "same test queries" in res.output


def test_compare_same_test_set_still_works(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_rec("cca")) + "\n" + json.dumps(_rec("scm", seed=1)) + "\n")
    res = runner.invoke(app, ["compare", str(path), "cca", "scm", "--resamples", "99"])
    assert res.exit_code == 0, res.output
    assert "i2t" in res.output and "p =" in res.output


def test_compare_names_the_per_query_scores_a_record_has(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_rec("cca")) + "\n" + json.dumps(_rec("scm", seed=1)) + "\n")
    res = runner.invoke(app, ["compare", str(path), "cca", "scm", "--metric", "r@3"])
    assert res.exit_code == 2
    assert "r@3" in res.output and "r@1, r@5, r@10" in res.output


def test_run_bench_refusals_in_python(wikipedia):  # the fixture skips without the data
    with pytest.raises(ParameterError, match="more than once"):
        run_bench("wikipedia", ["cca", "cca"])
    with pytest.raises(ParameterError, match="not among the methods"):
        run_bench("wikipedia", ["cca"], params={"sccm": {"reg": 1}})
    with pytest.raises(DataError, match="no/such/pairs.jsonl: file not found"):
        run_bench("no/such/pairs.jsonl", ["cca"])


def test_methods_listing_says_semi_supervised_and_whole_citations():
    res = runner.invoke(app, ["methods"])
    assert res.exit_code == 0
    rows = {line.split()[0]: line for line in res.output.splitlines()}
    assert rows["sslpdp"].split()[2] == "semi-supervised"
    assert rows["scm"].split()[2] == "supervised" and rows["cca"].split()[2] == "unsupervised"
    # the summary is a whole sentence, not a docstring's first line cut mid-title
    assert rows["acmr"].endswith('"Adversarial Cross-Modal Retrieval", ACM MM 2017).')
    listed = {r["name"]: r for r in json.loads(runner.invoke(app, ["methods", "--json"]).output)}
    assert listed["sslpdp"]["supervision"] == "semi-supervised" and listed["sslpdp"]["supervised"] is True


def test_files_that_are_not_records_are_clear_errors(tmp_path, wikipedia):
    other = tmp_path / "other.jsonl"
    other.write_text('{"a": 1}\n')
    res = _bench("--dataset", "wikipedia", "--methods", "cca", "--resume", str(other))
    assert res.exit_code == 2 and "line 1: not a record of xmodal bench (no 'dataset'" in res.output
    res = runner.invoke(app, ["compare", str(other), "cca", "scm"])
    assert res.exit_code == 2 and "not a record of xmodal bench" in res.output
    listed = tmp_path / "list.json"
    listed.write_text('[\n {"a": 1}\n]\n')
    res = runner.invoke(app, ["compare", str(listed), "cca", "scm"])
    assert res.exit_code == 2 and "record 1: not a record" in res.output
    res = _bench("--dataset", "wikipedia", "--methods", "cca", "--resume", str(listed))
    assert res.exit_code == 2 and "--resume takes the JSON-lines file" in res.output


def test_compare_picks_one_dataset_of_a_mixed_file(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = [_rec("cca"), _rec("scm", seed=1),
            _rec("cca", dataset="ucm_captions", protocol="classic: ucm_captions/test vs itself (other modality)")]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = runner.invoke(app, ["compare", str(path), "cca", "scm", "--resamples", "99"])
    assert res.exit_code == 2 and "--dataset" in res.output
    res = runner.invoke(app, ["compare", str(path), "cca", "scm", "--resamples", "99", "--dataset", "wikipedia"])
    assert res.exit_code == 0, res.output


def test_compare_the_same_method_under_two_settings(tmp_path):
    path = tmp_path / "r.jsonl"
    recs = [_rec("acmr"), _rec("acmr", seed=1, settings={"instance_weight": 0, "label_space": 0}),
            _rec("dscmr", seed=2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = runner.invoke(app, ["compare", str(path), "acmr", "dscmr", "--resamples", "99", "--json"])
    assert res.exit_code == 0, res.output  # the bare name: the run without --set
    assert json.loads(res.output)["i2t"]["a"] == pytest.approx(recs[0]["i2t"]["map"])
    res = runner.invoke(app, ["compare", str(path), "acmr:instance_weight=0,label_space=0", "acmr:",
                              "--resamples", "99", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["a"] == "acmr:instance_weight=0,label_space=0" and out["b"] == "acmr:"
    assert out["i2t"]["a"] == pytest.approx(recs[1]["i2t"]["map"]) and out["i2t"]["b"] == pytest.approx(recs[0]["i2t"]["map"])
    res = runner.invoke(app, ["compare", str(path), "acmr:instance_weight=1", "dscmr"])
    assert res.exit_code == 2 and "no record for method 'acmr:instance_weight=1'; its records: acmr, acmr:" in res.output


# ---------------------------------------------------------------- the dataset fingerprint's cache
def _aged(path, seconds_ago=60.0):
    """Give ``path`` an mtime in the past: a file modified just now is not cached (racy)."""
    import os
    import time

    t = int((time.time() - seconds_ago) * 1e9)
    os.utime(path, ns=(t, t))
    return path


@pytest.fixture
def counted_reads(monkeypatch, tmp_path):
    """Dataset-file opens by ``dataset_fingerprint``, with the cache in a private folder."""
    import xmodal.evaluation.fingerprint as fingerprint  # where dataset_fingerprint reads open

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    opened = []

    def counting_open(file, *a, **k):
        opened.append(str(file))
        return open(file, *a, **k)

    monkeypatch.setattr(fingerprint, "open", counting_open, raising=False)
    return opened


def test_fingerprint_cache_skips_unchanged_files_and_rehashes_edited_ones(tmp_path, counted_reads):
    import hashlib

    from xmodal.evaluation.bench import FINGERPRINT_CACHE, dataset_fingerprint

    a = _aged(_pairs(tmp_path / "one" / "pairs.jsonl", seed=0))
    expected = hashlib.sha256(b"pairs.jsonl\0" + a.read_bytes()).hexdigest()  # the format records carry
    assert dataset_fingerprint(str(a)) == expected and counted_reads == [str(a)]
    assert (tmp_path / "cache" / FINGERPRINT_CACHE).exists()
    assert dataset_fingerprint(str(a)) == expected and len(counted_reads) == 1  # not read again
    # An edit of the same size: only the modification time tells, and it re-hashes.
    text = a.read_text()
    a.write_text(text.replace("photo", "PHOTO"))
    _aged(a, 30.0)
    edited = dataset_fingerprint(str(a))
    assert edited != expected and len(counted_reads) == 2
    assert edited == hashlib.sha256(b"pairs.jsonl\0" + a.read_bytes()).hexdigest()
    assert dataset_fingerprint(str(a)) == edited and len(counted_reads) == 2
    # A dataset folder (several files, one digest) is cached and re-hashed the same way.
    folder = tmp_path / "ucm"
    folder.mkdir()
    (folder / "dataset.json").write_text('{"images": []}')
    _aged(folder / "dataset.json")
    fp = dataset_fingerprint(str(folder))
    n = len(counted_reads)
    assert dataset_fingerprint(str(folder)) == fp and len(counted_reads) == n
    # --cache-dir False: no cache at all.
    dataset_fingerprint(str(a), cache_dir=False)
    assert len(counted_reads) == n + 1


def test_fingerprint_of_a_file_modified_just_now_is_not_cached(tmp_path, counted_reads):
    # Within a coarse mtime tick a same-size rewrite can keep the time: such a file is re-read.
    from xmodal.evaluation.bench import dataset_fingerprint

    a = _pairs(tmp_path / "pairs.jsonl")
    first = dataset_fingerprint(str(a))
    assert dataset_fingerprint(str(a)) == first and len(counted_reads) == 2


@pytest.mark.parametrize("damage", ["garbage", "wrong shape", "bad digest", "unwritable"])
def test_fingerprint_cache_damage_never_fails_a_run(tmp_path, counted_reads, fake_encoders, damage):
    import hashlib

    from xmodal.evaluation.bench import FINGERPRINT_CACHE, dataset_fingerprint

    a = _aged(_pairs(tmp_path / "pairs.jsonl"))
    expected = hashlib.sha256(b"pairs.jsonl\0" + a.read_bytes()).hexdigest()
    cache = tmp_path / "cache" / FINGERPRINT_CACHE
    cache.parent.mkdir()
    if damage == "garbage":
        cache.write_bytes(b"\xff{not json")
    elif damage == "wrong shape":
        cache.write_text('{"format": 1, "entries": [1, 2]}')
    elif damage == "bad digest":  # an entry whose stat matches but whose digest is no digest
        st = a.stat()
        key = json.dumps([str(a.resolve())])
        cache.write_text(json.dumps({"format": 1, "entries": {
            key: {"stat": [[st.st_size, st.st_mtime_ns]], "sha256": "not a digest"}}}))
    else:  # the cache folder is a file: nothing can be written under it
        cache.parent.rmdir()
        cache.parent.write_text("a file, not a folder")
    assert dataset_fingerprint(str(a)) == expected
    recs = run_bench(str(a), ["cca"], image_encoder="x", text_encoder="y")
    assert recs[0]["dataset_sha256"] == expected
    if damage != "unwritable":  # repaired: the next run reads the cache, not the file
        n = len(counted_reads)
        assert dataset_fingerprint(str(a)) == expected and len(counted_reads) == n


# ------------------------------------------------- fingerprints of release and list folders
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _cleaned_lists(root, edit):
    _write(root / "all_imgs.txt", "".join(f"mirflickr/im{i}.jpg\n" for i in range(1, 7)))
    _write(root / "all_tags.txt", "sky,sea\ndog\ntree,night\nsky\nsea,dog\ntree\n")
    rows = ["1 0 0", "0 1 0", "0 0 1", "1 1 0", "0 1 1", "1 0 1"]
    if edit:
        rows[3] = "1 0 0"  # one label line
    _write(root / "all_labels.txt", "\n".join(rows) + "\n")


def _nus_release(root, edit):
    _write(root / "ImageList" / "Imagelist.txt",
           "".join(f"C:\\ImageData\\Flickr\\actor\\{i:04d}_{100 + i}.jpg\n" for i in range(6)))
    _write(root / "NUS_WID_Tags" / "AllTags1k.txt",
           "".join("\t".join("1" if j == i else "0" for j in range(1000)) + "\t\n" for i in range(6)))
    _write(root / "Concepts81.txt", "sky\nwater\n")
    _write(root / "Groundtruth" / "AllLabels" / "Labels_sky.txt", "1\n0\n1\n0\n1\n0\n")
    _write(root / "Groundtruth" / "AllLabels" / "Labels_water.txt",
           "0\n1\n0\n1\n0\n" + ("0\n" if edit else "1\n"))


def _mir_release(root, edit):
    from xmodal.data.mirflickr import MIRFLICKR_LABELS

    for i in range(1, 7):
        _write(root / "mirflickr" / "meta" / "tags" / f"tags{i}.txt", "sky\r\nsea\r\n" if i != 4 or not edit
               else "sky\r\ndog\r\n")  # one tag line
    for c, name in enumerate(MIRFLICKR_LABELS):
        _write(root / "mirflickr25k_annotations_v080" / f"{name}.txt", f"{c % 6 + 1}\r\n")


def _pascal_folders(root, edit):
    for cat in ("bird", "boat"):
        for k in range(2):
            _write(root / "dataset" / cat / f"2008_00{k}{cat[1]}.jpg", "not read")
            sents = [f"a {cat} number {k} sentence {j}" for j in range(5)]
            if edit and (cat, k) == ("boat", 1):
                sents[2] = "a boat on a lake"
            _write(root / "sentence" / cat / f"2008_00{k}{cat[1]}.txt", "\n".join(sents) + "\n")


def _wikipedia_release(root, edit):
    _write(root / "categories.list", "art\nbiology\n")
    _write(root / "trainset_txt_img_cat.list", "t1\ti1\t1\nt2\ti2\t2\n")
    _write(root / "testset_txt_img_cat.list", "t3\ti3\t1\n")
    for t in ("t1", "t2", "t3"):
        _write(root / "texts" / f"{t}.xml", f"<text>article {t}{' edited' if edit and t == 't2' else ''}</text>")


@pytest.mark.parametrize("write, layout", [(_cleaned_lists, "cleaned_lists"), (_nus_release, "nus_wide"),
                                           (_mir_release, "mirflickr25k"), (_pascal_folders, "pascal_sentences"),
                                           (_wikipedia_release, "wikipedia")])
def test_fingerprint_covers_the_lists_tags_and_labels_a_folder_is_read_from(tmp_path, monkeypatch, write, layout):
    # Folders of cleaned lists and releases hold no .json/.mat: every such folder had one
    # fingerprint, so --resume took the records of one download (or an edited label) for another.
    from xmodal.data import dataset_layout
    from xmodal.evaluation.bench import dataset_fingerprint

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    a, b, copy = tmp_path / "a" / "data", tmp_path / "b" / "data", tmp_path / "copy" / "data"
    write(a, edit=False)
    write(b, edit=True)
    write(copy, edit=False)
    assert dataset_layout(a) == layout
    fa, fb = dataset_fingerprint(str(a)), dataset_fingerprint(str(b))
    assert fa and fb and fa != fb
    assert dataset_fingerprint(str(copy)) == fa  # the same files elsewhere: the same dataset
    if layout == "pascal_sentences":  # an image moved to another category is another dataset
        for sub in ("dataset", "sentence"):
            (copy / sub / "bird" / "2008_001i.jpg").touch()
        (copy / "sentence" / "boat" / "2008_001o.txt").rename(copy / "sentence" / "bird" / "2008_001o.txt")
        (copy / "dataset" / "boat" / "2008_001o.jpg").rename(copy / "dataset" / "bird" / "2008_001o.jpg")
        assert dataset_fingerprint(str(copy)) != fa


def test_fingerprint_of_the_layouts_fingerprinted_before_is_unchanged(tmp_path, monkeypatch):
    # Records made before carry these digests: --resume must still find them.
    import hashlib

    from xmodal.evaluation.bench import dataset_fingerprint

    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))

    def old(*files):
        return hashlib.sha256(b"".join(f.name.encode() + b"\0" + f.read_bytes() for f in files)).hexdigest()

    karpathy = tmp_path / "flickr8k"
    j = _write(karpathy / "dataset_flickr8k.json", '{"images": [], "dataset": "flickr8k"}')
    _write(karpathy / "Flicker8k_Dataset" / "1.jpg", "not read")
    assert dataset_fingerprint(str(karpathy)) == old(j)
    index = tmp_path / "clip_hash"
    mats = [_write(index / n, f"bytes of {n}") for n in ("caption.mat", "index.mat", "label.mat")]
    assert dataset_fingerprint(str(index)) == old(*mats)
    ucm = tmp_path / "ucm"
    d = _write(ucm / "dataset.json", '{"images": []}')
    m = _write(ucm / "feats" / "x.mat", "mat bytes")
    assert dataset_fingerprint(str(ucm)) == old(d, m)
    p = _aged(_pairs(tmp_path / "pairs.jsonl"))
    assert dataset_fingerprint(str(p)) == old(p)


def test_fingerprint_cache_of_a_release_with_many_files(tmp_path, counted_reads):
    # MIRFlickr-25K's release is 25,000 tag files: one entry, unchanged files not read again,
    # one edited tag file re-hashed.
    from xmodal.evaluation.bench import FINGERPRINT_CACHE, dataset_fingerprint

    root = tmp_path / "mirflickr25k"
    _mir_release(root, edit=False)
    for i in range(7, 101):
        _write(root / "mirflickr" / "meta" / "tags" / f"tags{i}.txt", "tree\r\n")
    for f in root.rglob("*.txt"):
        _aged(f)
    fp = dataset_fingerprint(str(root))
    n = len(counted_reads)
    assert n == 100 + 24
    assert dataset_fingerprint(str(root)) == fp and len(counted_reads) == n
    cache = json.loads((tmp_path / "cache" / FINGERPRINT_CACHE).read_text())
    assert len(json.dumps(cache)) < 2000  # not 124 paths and stats
    tag = root / "mirflickr" / "meta" / "tags" / "tags50.txt"
    tag.write_text("lake\r\n")
    _aged(tag, 30.0)
    edited = dataset_fingerprint(str(root))
    assert edited != fp and len(counted_reads) == 2 * n
    assert dataset_fingerprint(str(root), cache_dir=False) == edited


def test_hashing_on_an_unlabelled_dataset_is_refused_before_fitting():
    """Flickr-like caption data has no labels: the hashing protocol's scores (query split
    against another split, relevance a shared label) were all empty, the tables all "-" and
    nothing said why. Refused before any fit, naming the methods and the splits."""
    from xmodal.data import DataError, PairedDataset
    from xmodal.evaluation.bench import run_bench

    rng = np.random.default_rng(0)
    n = 60
    ds = PairedDataset("captions_only", text_to_image=np.arange(n), n_images=n,
                       image_features=rng.standard_normal((n, 8)).astype(np.float32),
                       text_features=rng.standard_normal((n, 6)).astype(np.float32),
                       splits={"train": np.arange(40), "test": np.arange(40, 60)})
    with pytest.raises(DataError, match="lsh: dataset 'captions_only' has no labels.*'test' split.*'train' split"):
        run_bench(ds, ["cca", "lsh"], bits=[16])
    assert run_bench(ds, ["cca"])[0]["i2t"]["r@1"] >= 0  # real-valued methods still score on pairs


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("spec, says", [("nosuch", "unknown encoder 'nosuch'"),
                                        ("minilm", "is a text encoder, but an image encoder")])
def test_bench_refuses_a_bad_image_encoder_cleanly(tmp_path, spec, says):
    src = labelled_photos(tmp_path, 6)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"image": str(p), "text": f"caption {i}",
                                         "split": "train" if i < 3 else "test"}) + "\n"
                             for i, p in enumerate(sorted(src.rglob("*.png")))))
    res = run("bench", "--dataset", pairs, "--methods", "cca", "--quiet", "--image-encoder", spec,
              "--text-encoder", "tfidf")
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert says in " ".join(res.output.split())


def test_an_empty_cache_dir_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """``--cache-dir ""`` (an unset variable) was the current folder: a dataset given by path
    left its fingerprint cache (dataset-sha256.json) there."""
    pairs = _pairs(tmp_path / "p.jsonl")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    res = _bench("--dataset", str(pairs), "--methods", "cca", "--cache-dir", "")
    assert res.exit_code == 2, res.output
    assert "feature cache folder is empty" in res.output and list(work.iterdir()) == []
