"""The bench records as text: the results table, the survey's hashing tables, and the labels they use.

:func:`format_table` (a row per method and bit length, both directions' MAP, P@10 and Recall@K,
``mean±std`` over seeds) and :func:`format_hashing_tables` (per dataset, MAP by direction and
bit length, then MAP@k, P@k and precision within Hamming radius 2, as Markdown) take bench
records or a dict of :func:`~xmodal.evaluation.evaluate` results by name (:func:`as_records`).
Rows are named by :func:`config_label` (the name ``xmodal compare`` takes; the hashing tables
use :func:`row_label`, the same less the label budget their ``kind`` column says) and described
by :func:`method_kind` (the survey's family, which the runner stores in each record's ``kind``);
records of several datasets or protocols are tables apart, and records of one name or one
dataset that ran differently are refused rather than shown as one.
Every name stays importable from :mod:`xmodal.evaluation.bench`.
"""

from __future__ import annotations

import inspect
import json
from typing import Any, Callable, Mapping, Sequence

from .. import methods as registry
from ..data import DataError
from .records import RECORD_KEYS, check_record, differing_fields, summarize_seeds


BASELINES = ("lsh", "cca_itq")


def method_kind(name: str, params: dict[str, Any] | None = None, *, label_share: bool = True) -> str:
    """The survey's family of a method: baseline, (semi-/un)supervised, shallow or deep.
    ``label_share=False``: a semi-supervised method's share of labels is left unsaid (not
    known, e.g. for a result of evaluate() named by its method)."""
    cls = registry.get(name)
    if name in BASELINES:
        return "baseline"
    kind = registry.supervision(cls, detail=False)
    if kind == "semi-supervised" and label_share:
        frac = (params or {}).get("labeled_fraction", inspect.signature(cls.__init__).parameters["labeled_fraction"].default)
        kind += f" ({100 * float(frac):g}% labels)"
    # deep: trained by the shared PyTorch trainer (a plugin subclassing DSCMR is deep too;
    # its module name says nothing)
    return kind + (" (deep)" if any(k.__module__ == "xmodal.methods._torch" for k in cls.__mro__) else "")


def config_label(rec: dict) -> str:
    """A record's row name: ``method``, or ``method:param=value,...`` for a run with ``--set``
    settings, the name ``xmodal compare`` takes for that configuration (two settings of one
    method are two rows, which the bare method name could not tell apart)."""
    settings = rec.get("settings") or {}
    return rec["method"] + (":" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(settings.items()))
                            if settings else "")


def row_label(rec: dict) -> str:
    """A hashing table's row name and a PR plot's line: :func:`config_label` without the
    label budget (one ``--labeled-fraction`` for a whole run, said by the ``kind`` column), so
    two ``--set`` configurations of one method are two rows, as in :func:`format_table`."""
    settings = {k: v for k, v in (rec.get("settings") or {}).items() if k != "labeled_fraction"}
    return config_label({**rec, "settings": settings})


Results = Sequence[dict] | Mapping[str, dict]  # bench records, or evaluate() results by name


def _kind(rec: dict, known: bool = True) -> str:
    """A record's ``kind`` as stored, else :func:`method_kind` of its method when that is a
    registered one (an older record; with ``known=False`` a result of evaluate() named
    ``method`` or ``method:param=value,...``, whose label share is unknown), else "-"."""
    if rec.get("kind"):
        return rec["kind"]
    method = str(rec["method"]).partition(":")[0]
    try:
        return method_kind(method, rec.get("settings"), label_share=known)
    except registry.UnknownMethodError:
        return "-"  # a name of the caller's, or a plugin not loaded now


def as_records(results: Results, what: str = "records") -> list[dict]:
    """Bench records as they are, or ``{name: evaluate(...) result}`` (a notebook's results)
    as records named ``name`` (no dataset name, no fit time; ``bits`` read from a Hamming PR
    curve's radii when it has one), for :func:`format_table`, :func:`format_hashing_tables`
    and :func:`plot_pr_curves`. Anything else is a :class:`DataError` naming the entry."""
    if isinstance(results, Mapping):
        out = []
        for name, res in results.items():
            if isinstance(res, dict) and all(k in res for k in RECORD_KEYS):
                out.append(res)  # a bench record under a name of the caller's: its own name stays
                continue
            if not (isinstance(res, dict) and isinstance(res.get("i2t"), dict) and isinstance(res.get("t2i"), dict)):
                raise DataError(f"{what}: {name!r}: not a result of evaluate() (no 'i2t' and 't2i' "
                                "dicts) nor a record of xmodal bench")
            curve = res["i2t"].get("hamming_pr_curve")
            bits = len(curve["radius"]) - 1 if isinstance(curve, dict) and curve.get("radius") else None
            rec = {"dataset": "", "method": str(name), "bits": bits, **res}
            out.append({**rec, "kind": _kind(rec, known=False)})
        return out
    out = []
    for i, rec in enumerate(results):
        if isinstance(rec, dict) and "i2t" in rec and not all(k in rec for k in RECORD_KEYS):
            raise DataError(f"{what}[{i}]: a result of evaluate(), not a record of xmodal bench: "
                            "pass a dict name -> result to name its row or line")
        out.append(check_record(rec, f"{what}[{i}]"))
    return out


def _heading(*parts: str) -> str:
    """A panel or table heading from the non-empty parts (results of evaluate() have no dataset)."""
    return ", ".join(p for p in parts if p)


def _is_hashing(rec: dict) -> bool:
    """Scored under the hashing protocol (queries against a database): the record's
    ``protocol`` says so; an older record without one, its bit length."""
    protocol = rec.get("protocol")
    return protocol.startswith("hashing") if isinstance(protocol, str) else bool(rec.get("bits"))


def format_table(records: Results, markdown: bool = False) -> str:
    """Rows = methods (x bits), named by :func:`config_label`; columns = both directions' MAP,
    P@10 (and Recall@K / mR); records summarised over seeds (:func:`summarize_seeds`) show
    ``mean±std``. ``records``: bench records (:func:`run_bench`), or a dict of
    :func:`~xmodal.evaluation.evaluate` results by name (:func:`as_records`); returns the
    table as text (Markdown with ``markdown``). Records of several datasets, or of the classic
    and the hashing protocol, are one table each (its columns those its records have) under
    a heading naming the dataset and the protocol, as :func:`format_hashing_tables` heads
    each dataset's tables; one dataset under one protocol is one table without a heading."""
    records = summarize_seeds(as_records(records))
    groups: dict[tuple[str, bool], list[dict]] = {}
    for r in records:
        groups.setdefault((str(r["dataset"]), _is_hashing(r)), []).append(r)
    if len(groups) <= 1:
        return _one_table(records, markdown)
    out = []
    for (dsname, hashing), recs in groups.items():
        protocol = "hashing protocol" if hashing else "classic protocol"
        heading = f"{dsname}: {protocol}" if dsname else protocol  # results of evaluate(): no dataset
        out += [f"#### {heading}" if markdown else heading, "", _one_table(recs, markdown), ""]
    return "\n".join(out[:-1])


def _one_table(records: list[dict], markdown: bool) -> str:
    """:func:`format_table` of records of one dataset and protocol (summaries already)."""
    has_recall = any("mR" in r for r in records)
    has_map = any("map" in r["i2t"] for r in records)
    cols = ["method", "bits"]
    if has_map:
        cols += ["i2t MAP", "t2i MAP", "i2t P@10", "t2i P@10"]
    if has_recall:
        cols += ["i2t R@1", "i2t R@5", "i2t R@10", "t2i R@1", "t2i R@5", "t2i R@10", "mR"]
    cols += ["fit s"]
    rows = []
    for r in records:
        row = [config_label(r), "-" if r["bits"] is None else str(r["bits"])]
        if has_map:
            row += [_score(r, d, key) for key in ("map", "p@10") for d in ("i2t", "t2i")]
        if has_recall:
            row += [_score(r, d, f"r@{k}", 1) for d in ("i2t", "t2i") for k in (1, 5, 10)]
            row += [_score(r, None, "mR", 1)]
        row += [_f(r.get("fit_seconds"), 1)]
        rows.append(row)
    if markdown:
        return "\n".join(_md(cols, rows))
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)


def _md(cols: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def _one_summary_each(summaries: list[dict], what: str,
                      name: Callable[[dict], str] = config_label) -> None:
    """Refuse two summaries of one ``name`` (:func:`config_label`; :func:`row_label` for the
    hashing tables' rows and the PR plot's lines: two ``--set`` values of one method are two
    rows or lines) at one bit length on one dataset (seeds that ran with other parameters,
    data or tie order are never pooled): a table or a plot would show one of them under that
    name and hide the other."""
    seen: dict[tuple, dict] = {}
    for r in summaries:
        key = (r["dataset"], name(r), r.get("bits"))
        if key in seen:
            fields = differing_fields([seen[key], r])
            at = f" at {r['bits']} bits" if r.get("bits") else ""
            raise ValueError(f"{what}: records of {name(r)}{at} on {r['dataset']} differ in "
                             f"{', '.join(fields) or 'their run'}; pass the records of one run "
                             "(xmodal bench --resume redoes stale ones)")
        seen[key] = r


def _one_protocol_each(summaries: list[dict], what: str, by_bits: bool = False) -> None:
    """Refuse records of one dataset (at one bit length, with ``by_bits``) scored under other
    protocols (another database split, learned training codes): a table's heading or a plot
    panel names one database for all its methods."""
    seen: dict[tuple, str | None] = {}
    for r in summaries:
        key = (r["dataset"], r.get("bits") if by_bits else None)
        if key in seen and seen[key] != r.get("protocol"):
            raise ValueError(f"{what}: records of {r['dataset']} differ in protocol ({seen[key]!r} vs "
                             f"{r.get('protocol')!r}); pass the records of one database and one kind "
                             "of database codes")
        seen.setdefault(key, r.get("protocol"))


def format_hashing_tables(records: Results, detail_k: int = 100) -> str:
    """The survey's table shape for hashing: per dataset, methods x (direction x bits) MAP over
    the full ranking, then per bit length MAP@k, P@k and precision within Hamming radius 2
    (Markdown text). ``records``: bench records, or a dict of hashing-protocol
    :func:`~xmodal.evaluation.evaluate` results by name (``map_k`` including ``detail_k``;
    their bit length is read from the Hamming PR curve); records without bits are left out.
    Rows are named by :func:`row_label` (``dcmh``, ``dcmh:epochs=2``) and described by their
    ``kind`` (:func:`method_kind` for a result named by its method, "-" for another name)."""
    out = []
    recs = [r for r in summarize_seeds(as_records(records)) if r.get("bits")]
    _one_summary_each(recs, "hashing tables", row_label)
    _one_protocol_each(recs, "hashing tables")
    for dsname in dict.fromkeys(r["dataset"] for r in recs):
        mine = {(row_label(r), r["bits"]): r for r in recs if r["dataset"] == dsname}
        bits = sorted({b for _, b in mine})
        names = list(dict.fromkeys(m for m, _ in mine))
        codes = {r.get("database_codes", "hash") for r in mine.values()}
        note = "learned training codes" if codes == {"learned"} else "codes from the hash functions"
        out.append(f"#### {dsname + ': ' if dsname else ''}MAP (full ranking), image->text | text->image (database: {note})\n")
        rows = []
        for n in names:
            kind = next(_kind(r) for (m, _), r in mine.items() if m == n)
            rows.append([n, kind] + [_score(mine[(n, b)], d, "map") if (n, b) in mine else "-"
                                     for d in ("i2t", "t2i") for b in bits])
        out += _md(["method", "kind"] + [f"{d} {b}" for d in ("I->T", "T->I") for b in bits], rows)
        for b in bits:
            out.append(f"\n#### {_heading(dsname, f'{b} bits')}: MAP@{detail_k}, P@{detail_k}, precision within Hamming radius 2\n")
            rows = []
            for n in names:
                r = mine.get((n, b))
                if r is None:
                    continue
                rows.append([n] + [_score(r, d, key) for key in (f"map@{detail_k}", f"p@{detail_k}", "p@r2")
                                   for d in ("i2t", "t2i")] + [_f(r.get("fit_seconds"), 1)])
            out += _md(["method", f"I->T MAP@{detail_k}", f"T->I MAP@{detail_k}", f"I->T P@{detail_k}",
                        f"T->I P@{detail_k}", "I->T P@r2", "T->I P@r2", "fit s"], rows)
        out.append("")
    return "\n".join(out)


def _f(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _score(rec: dict, direction: str | None, key: str, digits: int = 4) -> str:
    """One table cell: the score, with ``±std`` when the record is a mean over seeds."""
    value = (rec[direction] if direction else rec).get(key)
    spread = rec.get("std", {})
    spread = spread.get(direction, {}).get(key) if direction else spread.get(key)
    if value is None or spread is None:
        return _f(value, digits)
    return f"{value:.{digits}f}±{spread:.{digits}f}"
