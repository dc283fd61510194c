"""The cheapest scripts in benchmarks/ run on today's API at their smallest sizes and print the
ratio (or verdict) lines they exist for. Timings are never asserted here (a shared machine is
noisy): targets are passed as 0 / huge so that only the output format and the FAIL path are
checked. The slower scripts (index_params, within_class_ceiling, search_startup, query_speed)
are left to their own smoke sizes, documented in their docstrings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
UCM_IMAGES = REPO.parent / "shared" / "data" / "ucm_captions" / "imgs"


def run(script: str, *args: str, timeout: float = 120) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "XMODAL_THREADS": "1", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def test_hamming_speed_prints_its_ratio_and_fails_a_missed_target():
    rc, out = run("hamming_speed.py", "--n-db", "20000", "--n-query", "20", "--repeats", "2", "--target", "0")
    assert rc == 0, out
    assert re.search(r"^ratio xmodal/faiss\s*: \d+\.\d{3}  \(target >= 0: met\)$", out, re.M), out
    rc, out = run("hamming_speed.py", "--n-db", "5000", "--n-query", "5", "--repeats", "1", "--target", "1e9")
    assert rc == 1 and re.search(r"\(target >= 1e\+09: FAIL\)", out), out


def test_hashing_criteria_counts_the_documented_violations(tmp_path):
    # docs/results.md: 61 violations over the tables' records
    rc, out = run("hashing_criteria.py", "docs/results-data/wiki_hash.jsonl", "docs/results-data/ucm_hash.jsonl")
    assert rc == 1, out
    assert out.splitlines()[-1] == "61 violation(s) over 128 records: FAIL"
    recs = [{"dataset": "d", "method": m, "bits": 32, "seed": 0, "kind": k,
             "i2t": {"map": v}, "t2i": {"map": v}}
            for m, k, v in (("lsh", "baseline", 0.1), ("cmfh", "unsupervised", 0.3), ("seph", "supervised", 0.5))]
    f = tmp_path / "ok.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rc, out = run("hashing_criteria.py", str(f))
    assert rc == 0 and out.splitlines() == ["all criteria met", "0 violation(s) over 3 records"], out


def test_search_speed_small():
    rc, out = run("search_speed.py", "--n", "5000", "--nq", "50", "--nq-float", "10", "--single", "5",
                  "--repeats", "1", "--http-n", "2000", "--http-queries", "25", "--ratio-target", "0",
                  "--p50-target-ms", "1e9")
    assert rc == 0, out
    assert len(re.findall(r"batch of \d+: xmodal .* ratio \d+\.\d{3}   \| one at a time: .* ratio \d+\.\d{3}$",
                          out, re.M)) == 2, out
    assert len(re.findall(r"^HTTP (float|binary) search .* p50 [\d.]+ ms", out, re.M)) == 3, out
    assert re.search(r"^targets \(batch ratio >= 0, .*\): met$", out, re.M), out


def test_shard_speed_small():
    rc, out = run("shard_speed.py", "--n", "4000", "--queries", "20", "--repeats", "1")
    assert rc == 0, out
    names = re.findall(r"^  (.+?)\s+[\d.]+ q/s   ratio to one collection (\d+\.\d{3})$", out, re.M)
    assert [n for n, _ in names] == ["one collection", "2 local shards", "local + HTTP shard"], out
    assert names[0][1] == "1.000"


def test_upload_speed_small():
    rc, out = run("upload_speed.py", "--n", "5000", "--adds", "3")
    assert rc == 0, out
    assert re.search(r"^ratio rewrite / catch-up: \d+(\.\d)?x$", out, re.M), out


def test_rerun_speed_small():
    rc, out = run("rerun_speed.py", "--n", "6", "--side", "96", "--repeats", "1")
    assert rc == 0, out
    assert re.search(r"^ratio \(hashed / stats\):\s+\d+\.\d\dx$", out, re.M), out


@pytest.mark.skipif(not UCM_IMAGES.is_dir(), reason="UCM-Captions images absent")
def test_encode_throughput_small():
    rc, out = run("encode_throughput.py", "--n", "16", "--batch-size", "8", "--repeats", "1", "--target", "0")
    assert rc == 0, out
    assert re.search(r"ratio \(b\)/\(a\) = \d+\.\d\d$", out, re.M), out
    assert re.search(r"^best ratio \(b\)/\(a\) = \d+\.\d\d \(workers=.*\); target >= 0: met$", out, re.M), out


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="a CUDA machine would run the whole check")
def test_device_check_stops_cleanly_without_cuda(tmp_path):
    rc, out = run("device_check.py", "run", "--bundle", str(tmp_path / "none"))
    assert rc == 1 and "make the bundle first" in out and "Traceback" not in out, out
    for f in ("bundle.npz", "texts.json", "raw.json"):
        (tmp_path / f).write_text("")
    rc, out = run("device_check.py", "run", "--bundle", str(tmp_path))
    assert rc == 1 and "device 'cuda' is not usable here" in out and "Traceback" not in out, out


def test_hashing_criteria_refuses_two_tables_of_one_cell(tmp_path):
    # Two records of one dataset/method/bits under other protocols (or encoders) were keyed
    # alike: the last one silently replaced the other in the check.
    recs = [{"dataset": "d", "method": "seph", "bits": 32, "seed": 0, "kind": "supervised",
             "protocol": p, "i2t": {"map": 0.5}, "t2i": {"map": 0.5}}
            for p in ("database: codes from the hash functions", "database: learned training codes")]
    f = tmp_path / "mixed.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in recs))
    rc, out = run("hashing_criteria.py", str(f))
    assert rc == 2, out
    assert "d seph 32" in out and "learned training codes" in out, out


@pytest.mark.parametrize("args, message", [
    (("--bits", "60"), "--bits must be a positive multiple of 8"),
    (("--n-db", "50", "--k", "100"), "--k must be between 1 and --n-db"),
])
def test_hamming_speed_refuses_bad_sizes(args, message):
    # These used to end in a FAISS assertion or a false "distances differ" (and no query or no
    # repeat in a ZeroDivisionError, checked the same way).
    rc, out = run("hamming_speed.py", "--n-db", "1000", *args)
    assert rc == 2 and message in out and "Traceback" not in out, out


def test_upload_speed_refuses_a_collection_too_small_for_catch_up():
    # Under REWRITE_BELOW_BYTES every add rewrites the index file: both paths are the same one
    # and the printed ratio (about 1x) compared nothing.
    rc, out = run("upload_speed.py", "--n", "500", "--adds", "3")
    assert rc == 2 and "--n 500" in out and "rewritten on every add" in out and "Traceback" not in out, out
    rc, out = run("upload_speed.py", "--n", "5000", "--adds", "0")
    assert rc == 2 and "--adds must be" in out and "Traceback" not in out, out


def test_search_speed_refuses_more_single_queries_than_the_batch():
    # Q[i:i+1] past the batch is empty: the one-at-a-time rate counted queries never sent.
    rc, out = run("search_speed.py", "--n", "1000", "--nq", "5", "--single", "10")
    assert rc == 2 and "--single" in out and "Traceback" not in out, out


def test_device_check_save_load_leaves_nothing_behind(tmp_path):
    # It saved /tmp/acmr.xmodal (the --tmp default) and never removed it.
    import importlib.util

    import numpy as np

    from xmodal.data import PairedDataset

    spec = importlib.util.spec_from_file_location("device_check", BENCH / "device_check.py")
    dc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dc)
    rng = np.random.default_rng(0)
    n = 40
    ds = PairedDataset("tiny", np.repeat(np.arange(n), 2), n,
                       image_features=rng.standard_normal((n, 16)).astype(np.float32),
                       text_features=rng.standard_normal((2 * n, 12)).astype(np.float32),
                       labels=np.arange(n) % 4, splits={"train": np.arange(30), "test": np.arange(30, 40)})
    out = tmp_path / "out.jsonl"
    with open(out, "w") as fh:
        dc.check_save_load(ds, ["cpu"], tmp_path, fh)
    rec = json.loads(out.read_text())
    assert rec["check"] == "save_load" and rec["max_abs_diff"] < 1e-5, rec
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def _load(script: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), BENCH / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_query_speed_refuses_no_queries_and_checks_its_ways_agree():
    # --n 0 ended in statistics.StatisticsError; the batch's hits were never compared with the
    # single queries' (a faster batch that answers otherwise is not faster).
    rc, out = run("query_speed.py", "--n", "0", "-c", "nowhere.xmc")
    assert rc == 2 and "--n must be at least 1" in out and "Traceback" not in out, out
    from xmodal.index import Hit

    qs = _load("query_speed.py")
    a = [[Hit(1, 0.5, "image", "k1"), Hit(2, 0.4, "image", "k2")]]
    qs.same_hits(a, [[Hit(2, 0.5 + 1e-6, "image", "k2"), Hit(1, 0.4, "image", "k1")]], "tie swap")
    with pytest.raises(SystemExit, match="batch: query 0 got other hits"):
        qs.same_hits(a, [[Hit(1, 0.5, "image", "k1"), Hit(3, 0.3, "image", "k3")]], "batch")


def test_rerun_speed_refuses_an_empty_folder():
    # --n 0 built from an empty folder and ended in a traceback from the indexer.
    rc, out = run("rerun_speed.py", "--n", "0")
    assert rc == 2 and "--n must be at least 1" in out and "Traceback" not in out, out


def test_encode_throughput_refuses_bad_sizes(tmp_path):
    # --batch-size 0 ended in "range() arg 3 must not be zero" after hashing every image.
    rc, out = run("encode_throughput.py", "--batch-size", "0", "--images", str(tmp_path))
    assert rc == 2 and "--batch-size must be at least 1" in out and "Traceback" not in out, out
    rc, out = run("encode_throughput.py", "--images", str(tmp_path / "none"))
    assert rc == 2 and "no such folder" in out and "Traceback" not in out, out


def test_shard_speed_refuses_too_few_items():
    # --n 1 left the first shard empty and printed ratios of a one-shard "split".
    rc, out = run("shard_speed.py", "--n", "1")
    assert rc == 2 and "--n must be at least 2" in out and "Traceback" not in out, out


def test_search_startup_refuses_bad_arguments(tmp_path):
    # --images 0 indexed an empty folder (CalledProcessError traceback); -c of a folder that
    # is no collection failed only in the first timed run.
    rc, out = run("search_startup.py", "--images", "0")
    assert rc == 2 and "--images must be between 1 and 42" in out and "Traceback" not in out, out
    rc, out = run("search_startup.py", "-c", str(tmp_path))
    assert rc == 2 and "not a collection" in out and "Traceback" not in out, out


def test_hashing_criteria_names_the_file_and_line_of_a_bad_record(tmp_path):
    # A bad line, a record without its scores or a missing file ended in a traceback.
    good = {"dataset": "d", "method": "lsh", "bits": 32, "seed": 0, "kind": "baseline",
            "i2t": {"map": 0.1}, "t2i": {"map": 0.1}}
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(good) + "\n{not json\n")
    rc, out = run("hashing_criteria.py", str(f))
    assert rc == 2 and f"{f}:2: not a JSON record" in out and "Traceback" not in out, out
    f.write_text(json.dumps(good) + "\n" + json.dumps({**good, "method": "cmfh", "t2i": {}}) + "\n")
    rc, out = run("hashing_criteria.py", str(f))
    assert rc == 2 and f"{f}:2: no t2i.map in the record" in out and "Traceback" not in out, out
    rc, out = run("hashing_criteria.py", str(tmp_path / "none.jsonl"))
    assert rc == 2 and "none.jsonl: No such file" in out and "Traceback" not in out, out


def test_serve_load_baseline_sends_every_kind_and_checks_its_arguments(tmp_path):
    # The baseline drew random kinds (a small one left kinds without a p50 alone: "nan") and
    # its first text query paid the encoder's loading (a 4 s "p50 alone", ratio 0.07).
    import random

    sl = _load("serve_load.py")
    reqs = sl.make_requests(len(sl.KINDS), random.Random(0), ["a caption"], [1, 2], ["x.jpg"], ["l"], cycle=True)
    assert [k for k, _ in reqs] == sl.KINDS
    rc, out = run("serve_load.py", str(tmp_path), "--baseline", "3")
    assert rc == 2 and "--baseline must be at least 8" in out and "Traceback" not in out, out
    rc, out = run("serve_load.py", str(tmp_path))
    assert rc == 2 and "not a collection" in out and "Traceback" not in out, out


def test_index_params_checks_sizes_before_loading_the_data():
    # A bad size ended in a ValueError traceback ("invalid literal", or numpy's "Cannot take a
    # larger sample") after the features were loaded.
    rc, out = run("index_params.py", "--sizes", "20,x")
    assert rc == 2 and "--sizes: x" in out and "Traceback" not in out, out


def test_within_class_ceiling_checks_its_arguments_first():
    # --epochs 0 loaded the features, fitted the methods, then failed on load_state_dict(None).
    rc, out = run("within_class_ceiling.py", "--epochs", "0")
    assert rc == 2 and "--epochs must be at least 1" in out and "Traceback" not in out, out
