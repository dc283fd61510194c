"""The benchmark runner behind ``xmodal bench``: fit methods on a dataset's training split and
score them with the dataset's protocol, one record per (method, bits)."""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import methods as registry
from ..data import DataError, PairedDataset, load_dataset
from .protocol import evaluate

SUMMARY_KEYS = ("map", "p@10")


def prepare_dataset(dataset: str | PairedDataset, data_dir: str | None = None,
                    image_encoder: str | None = None, text_encoder: str | None = None,
                    cache_dir: str | None = None, quiet: bool = True) -> PairedDataset:
    ds = load_dataset(dataset, data_dir=data_dir) if isinstance(dataset, str) else dataset
    if image_encoder or text_encoder:
        from ..encoders import encode_dataset  # heavy: torch, models

        ds = encode_dataset(ds, image_encoder=image_encoder, text_encoder=text_encoder,
                            cache_dir=cache_dir, quiet=quiet)
    if ds.image_features is None or ds.text_features is None:
        missing = "--image-encoder" if ds.image_features is None else "--text-encoder"
        raise DataError(f"dataset {ds.name!r} has no precomputed "
                        f"{'image' if ds.image_features is None else 'text'} features; pass {missing}")
    return ds


def _accepts(cls: type, name: str) -> bool:
    return name in inspect.signature(cls.__init__).parameters


def _split(ds: PairedDataset, *names: str) -> PairedDataset | None:
    for n in names:
        if n in ds.splits:
            return ds.subset(n)
    return None


def run_bench(dataset: str | PairedDataset, method_names: Sequence[str], *, bits: Sequence[int] = (32,),
              seed: int = 0, data_dir: str | None = None, image_encoder: str | None = None,
              text_encoder: str | None = None, cache_dir: str | None = None,
              params: dict[str, dict[str, Any]] | None = None, map_k: Sequence[int] = (),
              hashing_db: str = "database", quiet: bool = True,
              on_record: Callable[[dict], None] | None = None) -> list[dict]:
    """Fit and score each method; hashing methods once per bit length.

    Real-valued methods use the classic protocol on the test split (class mAP, P@k, and
    Recall@K / mR when instance pairs exist). Hashing methods use the hashing protocol:
    query split against the database split, database codes computed by the learned hash
    functions.
    """
    ds = prepare_dataset(dataset, data_dir, image_encoder, text_encoder, cache_dir, quiet)
    train = _split(ds, "train")
    if train is None:
        raise DataError(f"dataset {ds.name!r} has no 'train' split")
    val = _split(ds, "val")
    test = _split(ds, "test", "query")
    query, database = _split(ds, "query", "test"), _split(ds, hashing_db, "train")
    params = params or {}
    records = []
    for name in method_names:
        cls = registry.get(name)
        is_hash = cls.output == "binary"
        for b in (bits if is_hash else [None]):
            kw = dict(params.get(name, {}))
            if b is not None:
                kw["bits"] = b
            if _accepts(cls, "random_state"):
                kw.setdefault("random_state", seed)
            method = registry.create(name, **kw)
            t0 = time.perf_counter()
            method.fit(train, val=val)
            fit_seconds = time.perf_counter() - t0
            if getattr(method, "raw_inputs", ()):  # reads raw texts / image files at test time
                from ..methods.deep import raw_view

                scored = raw_view(method, test)
            else:
                scored = method
            if is_hash:
                res = evaluate(method, query, database, map_k=tuple(map_k) or (50, 100))
                protocol = f"hashing: {query.name} vs {database.name}, database codes from the hash functions"
            else:
                res = evaluate(scored, test, map_k=tuple(map_k))
                protocol = f"classic: {test.name} vs itself (other modality)"
            rec = {
                "dataset": ds.name, "method": name, "params": _jsonable(method.get_params()),
                "bits": b, "protocol": protocol,
                "image_encoder": image_encoder or ds.meta.get("image_feature"),
                "text_encoder": text_encoder or ds.meta.get("text_feature"),
                "i2t": res["i2t"], "t2i": res["t2i"],
                "fit_seconds": fit_seconds, "encode_seconds": res["encode_seconds"],
            }
            if "mR" in res:
                rec["mR"] = res["mR"]
            records.append(rec)
            if on_record:
                on_record(rec)
    return records


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


def format_table(records: list[dict], markdown: bool = False) -> str:
    """Rows = methods (x bits), columns = both directions' MAP, P@10 (and Recall@K / mR)."""
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
        row = [r["method"], "-" if r["bits"] is None else str(r["bits"])]
        if has_map:
            row += [_f(r["i2t"].get("map")), _f(r["t2i"].get("map")),
                    _f(r["i2t"].get("p@10")), _f(r["t2i"].get("p@10"))]
        if has_recall:
            row += [_f(r[d].get(f"r@{k}"), 1) for d in ("i2t", "t2i") for k in (1, 5, 10)]
            row += [_f(r.get("mR"), 1)]
        row += [f"{r['fit_seconds']:.1f}"]
        rows.append(row)
    if markdown:
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)


def _f(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def write_json(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(records, indent=1))
    tmp.replace(path)
