"""docs/results.md against the records it names in docs/results-data/: every table re-rendered
from its records file with the project's own formatting code (no fitting) must equal the doc's
table, so that the doc and the records cannot drift apart."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from xmodal.evaluation.bench import format_hashing_tables, format_table, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
DATA = ROOT / "docs" / "results-data"


def _tables(text: str) -> list[dict]:
    """Every Markdown table of ``text``: the nearest heading above it, its columns and rows."""
    lines = text.splitlines()
    out, heading, i = [], None, 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*-+\s*\|)+", lines[i + 1].strip()):
            cols = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            out.append({"heading": heading, "cols": cols, "rows": rows})
            continue
        i += 1
    return out


def _doc_table(heading_start: str, cols: list[str] | None = None) -> dict:
    found = [t for t in _tables(DOC.read_text()) if (t["heading"] or "").startswith(heading_start)
             and (cols is None or t["cols"] == cols)]
    assert len(found) == 1, f"docs/results.md: {len(found)} tables under a heading starting {heading_start!r}"
    return found[0]


def _records(name: str) -> list[dict]:
    path = DATA / name
    assert path.exists(), f"{path} is gone but docs/results.md names it"
    return read_jsonl(path)


def _rows(t: dict) -> dict[str, list[str]]:
    return {r[0]: r for r in t["rows"]}


# --- the formatter itself -------------------------------------------------------------------

def _rec(method: str, settings: dict, m: float) -> dict:
    return {"dataset": "d", "method": method, "bits": None, "seed": 0, "settings": settings,
            "params": {"random_state": 0, **settings}, "fit_seconds": 1.0,
            "i2t": {"map": m}, "t2i": {"map": m}}


def test_format_table_tells_two_settings_of_one_method_apart():
    """acmr by default and acmr with --set are two rows; both labelled 'acmr' they could not be
    told apart (docs/results.md labels them by hand). Each row is named as xmodal compare names
    the configuration."""
    recs = [_rec("acmr", {}, 0.9), _rec("acmr", {"instance_weight": 0, "label_space": 0}, 0.8),
            _rec("vsepp", {"text_model": "gru"}, 0.7)]
    for markdown in (True, False):
        table = format_table(recs, markdown=markdown)
        labels = [line.strip("| ").split()[0] for line in table.splitlines()[2:]]
        assert labels == ["acmr", "acmr:instance_weight=0,label_space=0", 'vsepp:text_model="gru"'], table


# --- the doc's tables against their records --------------------------------------------------

@pytest.mark.parametrize("records, dataset", [("wiki_hash.jsonl", "wikipedia"), ("ucm_hash.jsonl", "ucm_captions")])
def test_hashing_tables_match_their_records(records, dataset):
    rendered = _tables(format_hashing_tables(_records(records)))
    assert len(rendered) == 5
    for t in rendered:
        doc = _doc_table(t["heading"])
        assert doc["heading"].startswith(dataset)
        assert doc["cols"] == t["cols"], t["heading"]
        assert list(_rows(doc)) == list(_rows(t)), t["heading"]
        for name, row in _rows(t).items():
            for col, want, got in zip(t["cols"], _rows(doc)[name], row):
                if col == "fit s":  # the doc rounds fit seconds to whole seconds (timings: indicative)
                    assert abs(float(want) - float(got)) <= 0.55, f"{t['heading']}: {name}, fit s: doc {want}, records {got}"
                    continue
                assert want == got, f"{t['heading']}: {name}, {col}: doc {want}, records {got}"


def test_five_seed_lsh_cvh_imh_table_matches_its_records():
    recs = [r for r in _records("wiki_hash_seeds.jsonl") if r["method"] in ("lsh", "cvh", "imh")]
    assert {r["seed"] for r in recs} == {0, 1, 2, 3, 4}
    rendered = _rows(_tables(format_hashing_tables(recs))[0])
    doc = _doc_table("Reading the tables", ["method", "I->T 64", "I->T 128", "T->I 64", "T->I 128"])
    for name, row in _rows(doc).items():
        assert row == [rendered[name][0], *rendered[name][2:]], name  # the doc leaves out 'kind'


# the doc's hand-made row labels for the records' --set settings
PAPER_LOSS = {"instance_weight": 0, "label_space": 0}


def _settings_of(label: str) -> dict:
    if "paper's loss terms" in label:
        return PAPER_LOSS
    if "GRU" in label:
        return {"text_model": "gru", "dim": 256, "epochs": 15, "lr": 0.001}
    return {}


def _label_key(label: str) -> str:
    method = re.match(r"[a-z_0-9]+", label).group(0)
    settings = _settings_of(label)
    return method + (":" + ",".join(f"{k}={v}" for k, v in sorted(settings.items())) if settings else "")


SEED_COLS = ["method", "bits", "i2t MAP", "t2i MAP", "i2t P@10", "t2i P@10", "i2t R@1", "i2t R@5", "i2t R@10",
             "t2i R@1", "t2i R@5", "t2i R@10", "mR", "fit s"]


def test_three_seed_table_matches_its_records():
    doc = _doc_table("Run-to-run spread", SEED_COLS)
    rendered = _tables(format_table(_records("ucm_deep_d4.jsonl"), markdown=True))[0]
    assert doc["cols"] == rendered["cols"]
    assert [_label_key(r[0]) for r in doc["rows"]] == [r[0] for r in rendered["rows"]]
    for want, got in zip(doc["rows"], rendered["rows"]):
        assert want[1:] == got[1:], want[0]


def _deep_cells(r: dict, mr_digits: int) -> list[str]:
    """The deep tables' own layout: Recall@K in percent, mR, class mAP, fit seconds."""
    return ([f"{r[d][f'r@{k}']:.1f}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
            + [f"{r['mR']:.{mr_digits}f}", f"{r['i2t']['map']:.3f}", f"{r['t2i']['map']:.3f}",
               f"{r['fit_seconds']:.0f} s"])


@pytest.mark.parametrize("heading, records, mr_digits", [
    ("Best features: both towers", "ucm_deep_d4.jsonl", 1),
    ("Single centre crop", "ucm_deep_single.jsonl", 2),
    ("Two frozen image towers", "ucm_deep_two_tower.jsonl", 2),
])
def test_deep_seed0_tables_match_their_records(heading, records, mr_digits):
    recs = [r for r in _records(records) if r["seed"] == 0]
    doc = _doc_table(heading)
    used = []
    for row in doc["rows"]:
        method = re.match(r"[a-z_0-9]+", row[0]).group(0)
        mine = [r for r in recs if r["method"] == method and (r.get("settings") or {}) == _settings_of(row[0])]
        assert len(mine) == 1, f"{heading}: {row[0]}: {len(mine)} records"
        used += mine
        cells = [c.strip("*") for c in row[1:]]  # bold marks the targets met
        assert cells == _deep_cells(mine[0], mr_digits), f"{heading}: {row[0]}"
    assert len(used) == len(recs), f"{heading}: records no row shows"


def test_wikipedia_subspace_table_matches_its_records():
    doc = _doc_table("Subspace methods")
    rendered = _tables(format_table(_records("wiki_subspace.jsonl"), markdown=True))[0]
    assert doc["cols"] == rendered["cols"]
    assert [r[0] for r in doc["rows"]] == [r[0] for r in rendered["rows"]]
    for want, got in zip(doc["rows"], rendered["rows"]):
        assert want[:-1] == got[:-1], want[0]  # fit seconds aside (timings: indicative)


def test_wikipedia_deep_table_matches_its_records():
    recs = {r["method"]: r for r in _records("wiki_deep.jsonl")}
    doc = _doc_table("Wikipedia (classic features")
    assert [re.match(r"[a-z_0-9]+", r[0]).group(0) for r in doc["rows"]] == list(recs)
    for row in doc["rows"]:
        r = recs[re.match(r"[a-z_0-9]+", row[0]).group(0)]
        cells = [c.strip("*") for c in row[1:]]
        assert cells == [f"{r['i2t']['map']:.3f}", f"{r['t2i']['map']:.3f}", f"{r['fit_seconds']:.0f} s"], row[0]


def test_method_kind_is_the_family_the_records_store():
    """The records' ``kind`` is the family alone: a method that uses labels when present is
    supervised, one that only stops early on validation labels is unsupervised; a label budget
    given by --set is the one named."""
    from xmodal.evaluation.bench import method_kind

    assert method_kind("lsh") == "baseline" and method_kind("cca_itq") == "baseline"
    assert method_kind("cca") == "unsupervised" and method_kind("sm") == "supervised"
    assert method_kind("graph") == "supervised (deep)"
    assert method_kind("contrastive") == "unsupervised (deep)"
    assert method_kind("sslpdp") == "semi-supervised (10% labels)"
    assert method_kind("sslpdp", {"labeled_fraction": 0.25}) == "semi-supervised (25% labels)"


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_format_table_shows_every_column_some_record_has_as_plain_text_by_default():
    """A MAP-only record (hashing) beside a Recall@K-only one (captions): both column groups
    are shown, "-" where a record has no score; the default is the aligned plain-text table."""
    map_only = _rec("cca", {}, 0.5)
    hashing = {**_rec("lsh", {}, 0.5), "bits": 16}
    captions = {"dataset": "d", "method": "vsepp", "bits": None, "seed": 0, "settings": {}, "fit_seconds": 12.25,
                "i2t": {f"r@{k}": 10.0 * k for k in (1, 5, 10)}, "t2i": {f"r@{k}": 5.0 * k for k in (1, 5, 10)},
                "mR": 40.0}
    text = format_table([map_only, captions])
    lines = text.splitlines()
    assert "|" not in text and len(lines) == 4
    assert _cells(lines[0]) == SEED_COLS
    assert _cells(lines[2]) == ["cca", "-", "0.5000", "0.5000", "-", "-", "-", "-", "-", "-", "-", "-", "-", "1.0"]
    assert _cells(lines[3]) == ["vsepp", "-", "-", "-", "-", "-", "10.0", "50.0", "100.0", "5.0", "25.0", "50.0",
                                "40.0", "12.2"]
    # every column as wide as its widest cell: method names left-aligned, numbers right-aligned
    assert len({len(line) for line in lines}) == 1
    assert lines[2].startswith("cca  ") and lines[3].startswith("vsepp") and lines[2].endswith("  1.0")
    assert set(lines[1].replace(" ", "")) == {"-"}
    # a recall-only or MAP-only table has only its own columns
    assert _cells(format_table([captions]).splitlines()[0]) == ["method", "bits", *SEED_COLS[6:]]
    assert _cells(format_table([hashing]).splitlines()[0]) == SEED_COLS[:6] + ["fit s"]


def _hrec(method: str, bits: int | None, v: float, **extra) -> dict:
    def scores(s: float) -> dict:
        return {"map": v * s, "map@50": v / 2 * s, "p@50": v / 4 * s, "p@r2": v / 8 * s}
    return {"dataset": "d", "method": method, "bits": bits, "seed": 0, "fit_seconds": 1.25,
            "kind": "baseline" if method == "lsh" else "unsupervised", "i2t": scores(1), "t2i": scores(0.5), **extra}


def test_hashing_tables_by_hand():
    """Methods in first-seen order, bit lengths sorted, "-" for a bit length a method did not
    run, a detail table per bit length with only the methods run at it, records without bits
    left out; an evaluate() result's bit length read from its Hamming PR curve."""
    text = format_hashing_tables([_hrec("lsh", 32, 0.8), _hrec("cvh", 16, 0.6), _hrec("lsh", 16, 0.4),
                                  _hrec("cca", None, 0.1)], detail_k=50)
    detail = ["| method | I->T MAP@50 | T->I MAP@50 | I->T P@50 | T->I P@50 | I->T P@r2 | T->I P@r2 | fit s |",
              "|---|---|---|---|---|---|---|---|"]
    assert text.splitlines() == [
        "#### d: MAP (full ranking), image->text | text->image (database: codes from the hash functions)", "",
        "| method | kind | I->T 16 | I->T 32 | T->I 16 | T->I 32 |", "|---|---|---|---|---|---|",
        "| lsh | baseline | 0.4000 | 0.8000 | 0.2000 | 0.4000 |",
        "| cvh | unsupervised | 0.6000 | - | 0.3000 | - |",
        "", "#### d, 16 bits: MAP@50, P@50, precision within Hamming radius 2", "", *detail,
        "| lsh | 0.2000 | 0.1000 | 0.1000 | 0.0500 | 0.0500 | 0.0250 | 1.2 |",
        "| cvh | 0.3000 | 0.1500 | 0.1500 | 0.0750 | 0.0750 | 0.0375 | 1.2 |",
        "", "#### d, 32 bits: MAP@50, P@50, precision within Hamming radius 2", "", *detail,
        "| lsh | 0.4000 | 0.2000 | 0.2000 | 0.1000 | 0.1000 | 0.0500 | 1.2 |"]
    assert text.endswith("|\n")  # each dataset's tables end with a blank line
    learned = format_hashing_tables([_hrec("lsh", 16, 0.4, database_codes="learned")], detail_k=50)
    assert learned.startswith("#### d: MAP (full ranking), image->text | text->image (database: learned training codes)")
    mixed = format_hashing_tables([_hrec("lsh", 16, 0.4, database_codes="learned"), _hrec("cvh", 16, 0.4)])
    assert "(database: codes from the hash functions)" in mixed
    curve = {"radius": list(range(9)), "precision": [1.0] * 9, "recall": [0.0] * 9}
    result = {"i2t": {"map": 0.4, "map@50": 0.2, "p@50": 0.1, "p@r2": 0.3, "hamming_pr_curve": curve},
              "t2i": {"map": 0.2, "map@50": 0.1, "p@50": 0.05, "p@r2": 0.15}}
    lines = format_hashing_tables({"mine": result}, detail_k=50).splitlines()
    assert lines[0] == "#### MAP (full ranking), image->text | text->image (database: codes from the hash functions)"
    assert lines[2] == "| method | kind | I->T 8 | T->I 8 |" and lines[4] == "| mine | - | 0.4000 | 0.2000 |"
    assert lines[6] == "#### 8 bits: MAP@50, P@50, precision within Hamming radius 2"
    assert lines[10] == "| mine | 0.2000 | 0.1000 | 0.1000 | 0.0500 | 0.3000 | 0.1500 | - |"


def test_format_table_tells_datasets_apart_and_keeps_hashing_rows_apart():
    """Records of two datasets, or of the classic and the hashing protocol, are one table each
    under a heading naming the dataset and the protocol (as the hashing tables head each
    dataset's tables); records of one dataset and one protocol stay one table, no heading."""
    wiki, ucm = {**_rec("cca", {}, 0.25), "dataset": "wikipedia"}, {**_rec("cca", {}, 0.75), "dataset": "ucm"}
    hashed = {**_rec("lsh", {}, 0.5), "dataset": "wikipedia", "bits": 16,
              "protocol": "hashing: wikipedia/query vs wikipedia/database, database codes from the hash functions"}
    head = ["| method | bits | i2t MAP | t2i MAP | i2t P@10 | t2i P@10 | fit s |", "|---|---|---|---|---|---|---|"]
    assert format_table([wiki, hashed, ucm], markdown=True).splitlines() == [
        "#### wikipedia: classic protocol", "", *head, "| cca | - | 0.2500 | 0.2500 | - | - | 1.0 |", "",
        "#### wikipedia: hashing protocol", "", *head, "| lsh | 16 | 0.5000 | 0.5000 | - | - | 1.0 |", "",
        "#### ucm: classic protocol", "", *head, "| cca | - | 0.7500 | 0.7500 | - | - | 1.0 |"]
    text = format_table([wiki, ucm]).splitlines()
    assert text[0] == "wikipedia: classic protocol" and text[6] == "ucm: classic protocol" and text[5] == ""
    assert _cells(text[4]) == ["cca", "-", "0.2500", "0.2500", "-", "-", "1.0"]
    assert _cells(text[10]) == ["cca", "-", "0.7500", "0.7500", "-", "-", "1.0"] and len(text) == 11
    # older records without a protocol: a bit length says hashing; results of evaluate(): no dataset
    older = format_table([_rec("cca", {}, 0.5), {**_rec("lsh", {}, 0.5), "bits": 16}], markdown=True)
    assert [line for line in older.splitlines() if line.startswith("#")] == ["#### d: classic protocol",
                                                                             "#### d: hashing protocol"]
    curve = {"radius": list(range(9)), "precision": [1.0] * 9, "recall": [0.0] * 9}
    results = {"cca": {"i2t": {"map": 0.3}, "t2i": {"map": 0.3}, "protocol": "classic: test vs itself"},
               "lsh": {"i2t": {"map": 0.2, "hamming_pr_curve": curve}, "t2i": {"map": 0.2},
                       "protocol": "hashing: query vs database"}}
    assert [line for line in format_table(results, markdown=True).splitlines() if line.startswith("#")] == \
        ["#### classic protocol", "#### hashing protocol"]
    assert not format_table([wiki, {**wiki, "method": "pls"}], markdown=True).startswith("#")


def test_hashing_tables_name_rows_as_format_table_and_compare_do():
    """Two --set configurations of one method are two rows named by config_label (dcmh and
    dcmh:epochs=2), as in format_table, the PR plot and xmodal compare; they were refused as
    one 'dcmh' whose records differ."""
    plain, tuned = _hrec("dcmh", 16, 0.4, settings={}), _hrec("dcmh", 16, 0.6, settings={"epochs": 2})
    lines = format_hashing_tables([plain, tuned, _hrec("dcmh", 32, 0.5, settings={"epochs": 2})],
                                  detail_k=50).splitlines()
    assert lines[4:6] == ["| dcmh | unsupervised | 0.4000 | - | 0.2000 | - |",
                          "| dcmh:epochs=2 | unsupervised | 0.6000 | 0.5000 | 0.3000 | 0.2500 |"]
    assert [line.split(" | ")[0] for line in lines if line.startswith("| dcmh")] == \
        ["| dcmh", "| dcmh:epochs=2", "| dcmh", "| dcmh:epochs=2", "| dcmh:epochs=2"]
    with pytest.raises(ValueError, match="records of dcmh:epochs=2 at 16 bits on d differ in params"):
        format_hashing_tables([{**tuned, "params": {"a": 1}}, {**tuned, "seed": 1, "params": {"a": 2}}])


def test_hashing_tables_of_python_results_say_each_methods_kind():
    """Results of evaluate() by name get the kind a bench record stores (method_kind) when
    the name is a method's (or its config_label); a semi-supervised method's label budget
    is not known from a result, so only its family is said; another name gets "-"."""
    curve = {"radius": list(range(9)), "precision": [1.0] * 9, "recall": [0.0] * 9}

    def result(v):
        return {"i2t": {"map": v, "map@100": v, "p@100": v, "p@r2": v, "hamming_pr_curve": curve},
                "t2i": {"map": v, "map@100": v, "p@100": v, "p@r2": v}}

    lines = format_hashing_tables({"lsh": result(0.2), "cvh:alpha=2": result(0.3), "sslpdp": result(0.1),
                                   "mine": result(0.4)}).splitlines()
    assert [line.split(" | ")[:2] for line in lines[4:8]] == [
        ["| lsh", "baseline"], ["| cvh:alpha=2", "unsupervised"], ["| sslpdp", "semi-supervised"], ["| mine", "-"]]
    # a bench record without a stored kind (an older one) is told its family the same way
    older = {k: v for k, v in _hrec("cvh", 16, 0.4).items() if k != "kind"}
    assert "| cvh | unsupervised |" in format_hashing_tables([older])


def test_hashing_tables_refuse_one_dataset_under_two_protocols():
    a = _hrec("lsh", 16, 0.4, protocol="hashing: d/query vs d/database")
    b = _hrec("cvh", 32, 0.4, protocol="hashing: d/query vs d/train")
    with pytest.raises(ValueError, match=r"records of d differ in protocol \('hashing: d/query vs d/database' vs"):
        format_hashing_tables([a, b])
    assert format_hashing_tables([a, {**b, "dataset": "e"}]).count("####") == 4  # two datasets: fine
    with pytest.raises(ValueError, match="records of lsh at 16 bits on d differ in params"):
        format_hashing_tables([{**a, "params": {"alpha": 1}}, {**a, "seed": 1, "params": {"alpha": 2}}])


def test_format_table_markdown_by_hand():
    recs = [_rec("cca", {}, 0.25), {**_rec("cca", {}, 0.75), "seed": 1, "params": {"random_state": 1}},
            {**_rec("pls", {"n_components": 5}, 0.5), "bits": 64, "i2t": {"map": 0.5, "p@10": 0.125},
             "protocol": "classic: d/test vs itself (other modality)"}]  # a bit length, yet one table
    assert format_table(recs, markdown=True).splitlines() == [
        "| method | bits | i2t MAP | t2i MAP | i2t P@10 | t2i P@10 | fit s |", "|---|---|---|---|---|---|---|",
        "| cca | - | 0.5000±0.3536 | 0.5000±0.3536 | - | - | 1.0 |",  # two seeds: mean±std (ddof=1)
        "| pls:n_components=5 | 64 | 0.5000 | 0.5000 | 0.1250 | - | 1.0 |"]


def test_format_table_of_no_records_is_its_header():
    assert format_table([]).splitlines() == ["method  bits  fit s", "------  ----  -----"]
    assert format_table([], markdown=True).splitlines() == ["| method | bits | fit s |", "|---|---|---|"]


def test_two_runs_of_one_name_or_one_dataset_under_two_protocols_are_refused_as_said():
    """(plots.py calls these with bits None for real-valued methods and by bit length.)"""
    from xmodal.evaluation.tables import _one_protocol_each, _one_summary_each

    a, b = _rec("cca", {}, 0.5), {**_rec("cca", {}, 0.5), "params": {"random_state": 0, "reg": 1}}
    with pytest.raises(ValueError, match=r"PR curves: records of cca on d differ in params \(reg\); pass"):
        _one_summary_each([a, b], "PR curves")
    with pytest.raises(ValueError, match="records of cca at 16 bits on d differ in params"):
        _one_summary_each([{**a, "bits": 16}, {**b, "bits": 16}], "PR curves")
    _one_summary_each([{**a, "bits": 16}, {**b, "bits": 32}], "PR curves")  # two bit lengths: two rows
    p, q = ({**_hrec("lsh", bits, 0.4), "protocol": proto} for bits, proto in ((16, "x"), (32, "y")))
    _one_protocol_each([p, q], "PR curves", by_bits=True)  # one panel per bit length: each names its own
    with pytest.raises(ValueError, match=r"records of d differ in protocol \('x' vs 'y'\)"):
        _one_protocol_each([p, q], "PR curves")
    with pytest.raises(ValueError, match="differ in protocol"):
        _one_protocol_each([p, {**q, "bits": 16}], "PR curves", by_bits=True)
