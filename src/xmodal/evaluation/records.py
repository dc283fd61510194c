"""The records of ``xmodal bench``: what one is, how they are read and written, and how seeds pool.

A record is one (method, bits, seed) run as :func:`~xmodal.evaluation.bench.run_bench` writes
it (:data:`RECORD_KEYS` at least). Here are the key that matches a record on ``--resume``
(:func:`_record_key`), the fields that must agree before records are pooled or compared
(:data:`RUN_FIELDS`, :data:`CONFIG_FIELDS`, :func:`differing_fields`), the pooling of seeds
into mean and standard deviation (:func:`summarize_seeds`), and the records' files: JSON lines
(:func:`read_jsonl`, torn last line repaired) and one strict JSON list (:func:`write_json`,
:func:`_jsonable`). The runner, the tables and ``xmodal compare`` all read records through
these; every name stays importable from :mod:`xmodal.evaluation.bench`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._fs import atomic_write_bytes
from ..data import DataError
from .protocol import is_number, mean_scores


# what else a run's records must share to be pooled over seeds: the parameters the method ran
# with, the digest of the data as read, and the tie order (--resume redoes a record otherwise)
RUN_FIELDS = ("params", "data_digest", "ties", "method_source")
SEED_OWNED = ("random_state", "bits")  # params set per record by the seed and the bit length


# what can tell two summaries of one method apart (named when a table or compare must refuse)
CONFIG_FIELDS = ("dataset", "bits", "settings", "database_codes", "protocol", "image_encoder",
                 "text_encoder", "test_folds", "dataset_sha256", "data_options", *RUN_FIELDS)


def _record_key(rec: dict, with_seed: bool = True) -> str:
    key = [rec["dataset"], rec["method"], rec["bits"], rec.get("seed") if with_seed else None,
           rec.get("settings", {}), rec.get("database_codes"), rec.get("image_encoder"),
           rec.get("text_encoder")]
    if rec.get("test_folds", 1) != 1:  # absent from older records: their keys stay valid
        key.append(rec["test_folds"])
    if rec.get("dataset_sha256"):  # a dataset given as a file: its name is only the file's stem
        key.append(rec["dataset_sha256"])
    if rec.get("data_options"):  # the loader's options (a split, labels dropped): other data
        key.append(rec["data_options"])
    if rec.get("protocol"):  # the queries and the database searched (--hashing-db): another test
        key.append(rec["protocol"])
    return json.dumps(key, sort_keys=True)


def _run_value(rec: dict, field: str) -> str:
    """A record's ``field`` as comparable text; in ``params``, those the seed and the bit
    length set are no difference (seeds of one run differ there by design)."""
    v = rec.get(field)
    if field == "params":
        v = {k: x for k, x in (v or {}).items() if k not in SEED_OWNED}
    return json.dumps(v, sort_keys=True, default=str)


def _run_signature(rec: dict) -> str:
    """The record's :data:`RUN_FIELDS`, as :func:`_run_value` compares them."""
    return "\n".join(_run_value(rec, f) for f in RUN_FIELDS)


def differing_fields(recs: list[dict], fields: Sequence[str] = CONFIG_FIELDS) -> list[str]:
    """The ``fields`` whose values differ between ``recs``; ``params (alpha, ...)`` names the
    parameters that do (as :func:`_run_value` compares them)."""
    out = []
    for f in fields:
        if len({_run_value(r, f) for r in recs}) > 1:
            if f == "params":
                ps = [json.loads(_run_value(r, "params")) for r in recs]
                keys = sorted({k for p in ps for k in p if len({json.dumps(q.get(k), sort_keys=True) for q in ps}) > 1})
                f += f" ({', '.join(keys)})"
            out.append(f)
    return out


def summarize_seeds(records: list[dict]) -> list[dict]:
    """One record per (dataset, method, bits, settings, encoders, protocol), in first-seen order.

    Records that differ only by seed become their mean, with ``seeds`` listing the seeds and
    ``std`` the sample standard deviation (ddof=1) of every scalar score (``std["i2t"]["map"]``,
    ``std["mR"]``); a record with no sibling passes through unchanged. Of records that share
    the seed too (a ``--resume`` file holds the first run and a redone one, e.g. with
    ``--per-query`` added or after a default changed) only the last counts, as on resume.

    Records whose ``params`` (a default changed since), ``data_digest`` (the loader reads the
    data differently) or ``ties`` differ are never pooled, even when everything else matches:
    they stay separate summaries (the fields in :data:`RUN_FIELDS`, which ``--resume`` also
    matches), and ``xmodal compare`` refuses to choose between them. Rerunning the seeds with
    ``xmodal bench --resume`` redoes the stale ones, and the newer records replace them here.
    """
    latest: dict[str, dict] = {}
    for r in records:
        latest[_record_key(r)] = r  # same key: the newer record replaces the older in place
    groups: dict[str, list[dict]] = {}
    for r in latest.values():
        groups.setdefault(_record_key(r, with_seed=False) + _run_signature(r), []).append(r)
    out = []
    for recs in groups.values():
        if len(recs) == 1:
            out.append(recs[0])
            continue
        summary = {k: v for k, v in recs[0].items() if k != "seed"}
        summary["seeds"] = [r.get("seed") for r in recs]
        std: dict[str, Any] = {}
        for d in ("i2t", "t2i"):
            summary[d], std[d] = mean_scores([r[d] for r in recs])
        for key in ("mR", "fit_seconds", "encode_seconds"):
            if all(is_number(r.get(key)) for r in recs):
                a = np.asarray([r[key] for r in recs], dtype=float)
                summary[key] = float(a.mean())
                if key == "mR":
                    std[key] = float(a.std(ddof=1))
        summary["std"] = std
        out.append(summary)
    return out


RECORD_KEYS = ("dataset", "method", "bits", "i2t", "t2i")


def check_record(rec: Any, where: str) -> dict:
    """``rec`` if it is a record of :func:`run_bench`, else a :class:`DataError` naming ``where``."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: not a record of xmodal bench (a JSON object), got {type(rec).__name__}")
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise DataError(f"{where}: not a record of xmodal bench (no {', '.join(map(repr, missing))})")
    return rec


def read_jsonl(path: str | Path, repair: bool = False) -> list[dict]:
    """Records of an earlier (possibly interrupted) run. A torn last line (a run killed
    mid-write: it begins as a record, ``{``) is ignored, and with ``repair`` cut from the file
    so appends start clean; any other line that is not a record, a last line of other text
    included, and a file that is not UTF-8 text are a :class:`DataError` naming the file (and
    the line), the file left as it is."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    if path.is_dir():
        raise DataError(f"{path}: not a records file: a folder")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a records file: not UTF-8 text (a binary file?)") from None
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines) or not line.lstrip().startswith("{"):
                # a line in the middle, or a last one that never began as a record: no torn write
                hint = (" (a --json file, one JSON list: --resume takes the JSON-lines file that "
                        "--resume writes, one record per line)") if line.lstrip().startswith("[") else ""
                what = "" if line.lstrip().startswith("{") else "not a records file: "
                raise DataError(f"{path}: {what}line {i} is not valid JSON{hint}") from None
            if repair:  # that record is simply redone
                atomic_write_bytes(path, "".join(lines[:-1]).encode())
            continue
        out.append(check_record(rec, f"{path}: line {i}"))
    return out


def _jsonable(d: Any) -> Any:
    """Plain JSON values: NumPy arrays and scalars converted, NaN/inf (a diverged method) as
    null, so the records parse with any strict JSON reader."""
    def default(v):
        if isinstance(v, np.ndarray):
            return v.tolist()
        return v.item() if isinstance(v, np.generic) else str(v)

    def finite(v):
        if isinstance(v, float):
            return v if np.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, list):
            return [finite(x) for x in v]
        return v
    return finite(json.loads(json.dumps(d, default=default)))


def write_json(records: list[dict], path: str | Path) -> None:
    """The records as one strict JSON list (NaN and inf written as null), written atomically:
    a write that fails (a full disk) leaves the earlier file whole and no temp file behind."""
    atomic_write_bytes(path, json.dumps(_jsonable(records), indent=1, allow_nan=False).encode())
