"""The benchmark runner behind ``xmodal bench``: fit methods on a dataset's training split and
score them with the dataset's protocol, one record per (method, bits).

Here are :func:`run_bench` and what it runs on: the dataset's preparation
(:func:`prepare_dataset`, :func:`hashing_split_names`), the checks made before any encoding
(:func:`_preflight`), each method's keyword arguments (:func:`_method_kwargs`), the protocol a
record is scored under (:func:`_protocol`, :func:`_score_run`), and what a record says about
the run (:func:`versions`, :func:`thread_counts`, :func:`provenance`, :data:`TIES`). The records
themselves (matching on ``--resume``, pooling seeds, files) are in :mod:`.records`, the data's
digests in :mod:`.fingerprint`, the tables in :mod:`.tables` and the PR plots in :mod:`.plots`;
every name of those stays importable from here, where ``xmodal bench`` and ``xmodal compare``
import them.
"""

from __future__ import annotations

import inspect
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import methods as registry
from ..methods import ParameterError
from ..data import DataError, PairedDataset, load_dataset
from ..metrics.ranking import NonFiniteScoresError
from ..methods.base import NoTrainingCodesError, TrainingDivergedError
from .protocol import evaluate, evaluate_folds, protocol_of

# Re-exported: this module stays the one to import the bench's names from (the CLI reads
# run_bench, format_table, write_json and the rest here, and tests set them here).
from .fingerprint import (FINGERPRINT_CACHE, _BIG_CACHE_ENTRY, _FINGERPRINT_CACHE_SIZE, _RACY_S,  # noqa: F401
                          _hash_files, _read_fingerprint_cache, _write_fingerprint_cache, content_digest,
                          dataset_fingerprint)
from .plots import _line_name, plot_pr_curves  # noqa: F401
from .records import (CONFIG_FIELDS, RECORD_KEYS, RUN_FIELDS, SEED_OWNED, _jsonable, _record_key,  # noqa: F401
                      _run_signature, _run_value, check_record, differing_fields, read_jsonl, summarize_seeds,
                      write_json)
from .tables import (BASELINES, Results, _f, _heading, _md, _one_protocol_each, _one_summary_each,  # noqa: F401
                     _score, as_records, config_label, format_hashing_tables, format_table, method_kind)


SUMMARY_KEYS = ("map", "p@10")
DATABASE_CODES = ("hash", "learned")


def prepare_dataset(dataset: str | PairedDataset, data_dir: str | None = None,
                    image_encoder: str | None = None, text_encoder: str | None = None,
                    cache_dir: str | None = None, quiet: bool = True) -> PairedDataset:
    """``dataset`` (a name, a path or a :class:`PairedDataset`) with features: loaded, then
    encoded with ``image_encoder`` / ``text_encoder`` when given (cached under ``cache_dir``,
    :func:`xmodal.encoders.encode_dataset`); a dataset left without image or text features is
    a :class:`DataError` naming the option to pass."""
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


def _split_hint(ds: PairedDataset) -> str:
    """What to do about a dataset without a test split, where its loader says
    (``meta["split_hint"]``)."""
    hint = ds.meta.get("split_hint")
    return f"; {hint}" if hint else ""


def _split(ds: PairedDataset, *names: str) -> PairedDataset | None:
    for n in names:
        if n in ds.splits:
            return ds.subset(n)
    return None


def hashing_split_names(ds: PairedDataset, hashing_db: str | None = None,
                   database_codes: str = "hash") -> tuple[str, str]:
    """The (query, database) split names of the hashing protocol: queries from ``query`` (else
    ``test``); the database from ``hashing_db`` when given, else ``database``, else ``train``.
    With ``database_codes="learned"`` the database is the training split, the items whose codes
    the method learned (DCMH-protocol datasets have a larger ``database`` than ``train``)."""
    has = ", ".join(f"{k!r}" for k in ds.splits) or "none"
    query = next((n for n in ("query", "test") if n in ds.splits), None)
    if query is None:
        raise DataError(f"dataset {ds.name!r} has no 'query' or 'test' split for the hashing queries "
                        f"(its splits: {has}){_split_hint(ds)}")
    if hashing_db is not None and hashing_db not in ds.splits:
        raise DataError(f"hashing database split {hashing_db!r}: dataset {ds.name!r} has no such split "
                        f"(its splits: {has})")
    if "train" not in ds.splits:
        raise DataError(f"dataset {ds.name!r} has no 'train' split (its splits: {has})")
    if database_codes == "learned":
        if hashing_db is not None and not np.array_equal(ds.splits[hashing_db], ds.splits["train"]):
            raise ParameterError(f"hashing database split {hashing_db!r} is not the training split: with "
                                 "database codes 'learned' the database is the training split, the items "
                                 "whose codes the method learned")
        return query, "train"
    return query, hashing_db or ("database" if "database" in ds.splits else "train")


def _method_kwargs(cls: type, given: dict[str, Any], labeled_fraction: float | None,
                   bits: int | None, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """One run's record settings (the --set values and the label budget) and the method's
    keyword arguments (those, the bit length and the seed)."""
    settings = dict(given)
    if labeled_fraction is not None and _accepts(cls, "labeled_fraction"):
        settings.setdefault("labeled_fraction", labeled_fraction)
    kw = dict(settings)
    if bits is not None:
        kw["bits"] = bits
    if _accepts(cls, "random_state"):
        kw.setdefault("random_state", seed)  # --set cannot name it (refused up front)
    return settings, kw


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries a score depends on, for the records."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"xmodal": __version__, "python": platform.python_version()}
    for dist in ("numpy", "scipy", "scikit-learn", "faiss-cpu", "torch"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


def thread_counts() -> dict[str, int]:
    """The threads a run computes with, for the records: results are repeatable bit for bit
    for one thread count, not across them (BLAS and PyTorch sum in another order).
    ``torch``: the deep methods' training threads (``$XMODAL_THREADS``); the BLAS and OpenMP
    pools (NumPy/SciPy, FAISS) as threadpoolctl finds them loaded."""
    from threadpoolctl import threadpool_info

    from ..methods._torch import default_threads

    out = {"torch": default_threads()}
    for pool in threadpool_info():
        api = pool.get("user_api")
        if api in ("blas", "openmp"):
            out[api] = max(out.get(api, 0), int(pool.get("num_threads") or 0))
    return out


def provenance(command: str | None = None, records: Sequence[dict] | None = None) -> str:
    """A Markdown comment (invisible when rendered) naming the command and the versions that
    produced a table, for the foot of ``--markdown`` files. With ``records``, the versions are
    those the records carry (resumed ones may come from an older release), not this process's."""
    if records is None:
        seen = [versions()]
    else:
        seen = list({json.dumps(r.get("versions"), sort_keys=True): r.get("versions") for r in records}.values())
    if len(seen) == 1 and seen[0]:
        vs = ", ".join(f"{k} {v}" for k, v in seen[0].items())
    elif not any(seen):
        vs = "versions not recorded (records of an older xmodal)"
    else:
        vs = "versions differ between the records (see each record's 'versions')"
    return f"<!-- {command + '; ' if command else ''}{vs} -->"



# How the records' rankings order tied scores (the metrics' default tie_seed); records
# without it ranked ties in database order, and --resume redoes them.
TIES = "one fixed random order of the database (tie_seed=0)"


# parameters that bench sets itself, by the run_bench argument that sets them: a --set of them
# would be overridden or mislabel the records (the CLI names its own options for them)
BENCH_OWNED = {"bits": "bits", "random_state": "seed"}


def _preflight(ds: PairedDataset, method_names: Sequence[str], bits: Sequence[int], seeds: Sequence[int],
               params: dict[str, dict[str, Any]], labeled_fraction: float | None,
               hashing_db: str | None = None, database_codes: str = "hash") -> None:
    """Every check that needs no features, so that a typo fails before minutes of encoding
    (and before earlier methods have been fitted)."""
    if not method_names:
        raise ParameterError("no method to run: name at least one (see `xmodal methods`)")
    dup = sorted({n for n in method_names if list(method_names).count(n) > 1})
    if dup:
        raise ParameterError(f"method(s) {', '.join(dup)} named more than once; each runs once per seed")
    classes = [registry.get(n) for n in method_names]  # unknown names: KeyError listing the known ones
    hashing = [n for n, c in zip(method_names, classes) if c.output == "binary"]
    if hashing and not bits:
        raise ParameterError(f"no bit length for the hashing method(s) {', '.join(hashing)}")
    if hashing and len(set(bits)) != len(bits):
        raise ParameterError(f"bits {', '.join(map(str, bits))}: a bit length given more than once")
    stray = sorted(set(params) - set(method_names))
    if stray:
        raise ParameterError(f"parameters given for {', '.join(map(repr, stray))}, which "
                             f"{'is' if len(stray) == 1 else 'are'} not among the methods: "
                             f"{', '.join(method_names)}")
    for name, cls in zip(method_names, classes):
        for pname, arg in BENCH_OWNED.items():
            if pname in params.get(name, {}):
                raise ParameterError(f"{name}.{pname} is set by run_bench's {arg} argument, not by params")
        is_hash = cls.output == "binary"
        for b in (bits if is_hash else [None]):
            _, kw = _method_kwargs(cls, params.get(name, {}), labeled_fraction, b, seeds[0])
            registry.create(name, **kw)._validate_params()
    has = ", ".join(f"{k} ({len(v)} images)" for k, v in ds.splits.items()) or "none"
    if "train" not in ds.splits:
        raise DataError(f"dataset {ds.name!r} has no 'train' split (it has {has})")
    test = next((n for n in ("test", "query") if n in ds.splits), None)
    if test is None or len(ds.splits[test]) < 2:
        raise DataError(f"dataset {ds.name!r} needs a 'test' split of at least 2 images to score on "
                        f"(it has {has}){_split_hint(ds)}")
    if hashing:  # the database split: a misspelled name must not fall back to another split
        q, db = hashing_split_names(ds, hashing_db, database_codes)
        if ds.labels is None and not np.array_equal(ds.splits[q], ds.splits[db]):
            # relevance is a shared label, and no query has a pair in another split: every
            # score would be empty (the tables all "-", said nowhere)
            raise DataError(f"{', '.join(hashing)}: dataset {ds.name!r} has no labels, and the hashing "
                            f"protocol scores the {q!r} split's queries against the {db!r} split by "
                            "shared labels: nothing could be scored; bench hashing methods on a labelled "
                            "dataset (give each row a 'label' or 'labels')")
    supervised = [n for n, c in zip(method_names, classes) if c.supervised]
    train_labels = ds.subset("train").labels if ds.labels is not None else None
    if supervised and train_labels is None:
        raise DataError(f"{', '.join(supervised)} {'is' if len(supervised) == 1 else 'are'} supervised "
                        f"but dataset {ds.name!r} has no labels (give each row a 'label' or 'labels')")
    if ds.labels is not None:
        present = np.flatnonzero(np.asarray(train_labels).sum(axis=0) > 0)
        if len(present) < 2:
            names = ds.label_names or [str(i) for i in range(ds.labels.shape[1])]
            what = f"one class ({', '.join(repr(names[i]) for i in present) or 'none'})"
            if supervised:
                raise DataError(f"{', '.join(supervised)}: dataset {ds.name!r} has only {what} in its "
                                "training split; a supervised method needs at least two")
            warnings.warn(f"dataset {ds.name!r} has only {what} in its training split: class mAP and "
                          "P@k are 1 for any ranking there; read Recall@K instead", stacklevel=3)


def _check_resume_file(path: str | Path) -> None:
    """Refuse a ``resume`` file that is not a JSON-lines file of records before anything is
    loaded or encoded (:func:`read_jsonl`'s own rules, without the repair that cuts a torn
    last record later)."""
    if Path(path).is_file():  # a new file is fine (a folder is refused by the CLI up front)
        read_jsonl(path)


def _device_name() -> str:
    """Where the fit ran (timings depend on it; results are matched on resume without it)."""
    from ..device import get_device

    return str(get_device())


def run_bench(dataset: str | PairedDataset, method_names: Sequence[str], *, bits: Sequence[int] = (32,),
              seed: int | Sequence[int] = 0, data_dir: str | None = None, image_encoder: str | None = None,
              text_encoder: str | None = None, cache_dir: str | None = None,
              params: dict[str, dict[str, Any]] | None = None, map_k: Sequence[int] = (),
              hashing_db: str | None = None, labeled_fraction: float | None = None,
              database_codes: str = "hash", resume: str | Path | None = None, quiet: bool = True,
              per_query: bool = False, test_folds: int = 1,
              on_record: Callable[[dict], None] | None = None, command: str | None = None,
              failures: list[dict] | None = None, data_options: dict[str, Any] | None = None,
              on_reused: Callable[[dict], None] | None = None) -> list[dict]:
    """Fit and score each method; hashing methods once per bit length.

    Real-valued methods use the classic protocol on the test split (class mAP, P@k, and
    Recall@K / mR when instance pairs exist). Hashing methods use the hashing protocol:
    query split against the database split, database codes computed by the learned hash
    functions (``database_codes="hash"``) or, for methods that learn them, the learned
    training codes (``"learned"``, the variant some papers report; labelled in the record).
    The database is the ``hashing_db`` split, by default ``database`` (else ``train``); with
    learned codes it is the training split, whose items the codes were learned for (said in
    the record's ``protocol``). A ``hashing_db`` that is not a split of the dataset is refused.
    ``labeled_fraction`` is passed to the semi-supervised methods. With ``resume`` every
    record is appended to that JSON-lines file as soon as it is done, and records already
    there (same dataset, method, bits, seed, settings, database codes, encoders, and
    ``protocol``: the same queries and database, so another ``hashing_db`` is redone) are reused
    instead of recomputed, unless a ``map_k`` asked for is missing from them or their
    ``params`` differ from the method's parameters now (a default changed since): those are
    redone, and the newer record is the one used.
    ``data_options`` are keyword arguments of the dataset's loader (e.g. ``split="official"``
    for NUS-WIDE, ``split="hashing"`` for COCO's own files), recorded in each record and part
    of the ``resume`` match; one the loader does not take is refused, naming it.
    A diverged run (training stopped by a non-finite loss or gradient,
    :class:`~xmodal.methods.base.TrainingDivergedError`, or scores that are not finite,
    :class:`~xmodal.metrics.ranking.NonFiniteScoresError`) raises, unless ``failures`` is a
    list: the run is then appended to it (``method``, ``bits``, ``seed``, ``error``) and left
    out of the records and of ``resume`` (a rerun tries it again), and the other runs go on.
    ``seed`` may be a list: every (method, bits) is then run once per seed, one record each
    (:func:`summarize_seeds` folds them into mean and standard deviation). ``per_query`` keeps
    every query's AP and Recall@K hits in the record, for :mod:`.significance` tests (a resumed
    record without them is recomputed). ``test_folds`` scores real-valued methods on that many
    disjoint blocks of the test images and averages them (MSCOCO "1K test": 5 folds of the
    5000 test images; :func:`.protocol.evaluate_folds`). ``on_record`` is called with each
    record as it is done; a record reused from ``resume`` goes to ``on_reused`` instead when
    that is given (else to ``on_record`` too), so progress output can mark it.

    Everything that needs no features is checked before the dataset is encoded: method names
    (each once), parameter names and values (``bits`` included), ``params`` only for methods
    that run, ``bits`` / ``random_state`` only through ``bits`` / ``seed``, labels (two classes
    or more) for supervised methods. Each new record carries ``versions`` (Python and the
    libraries), ``command`` when given, ``dataset_sha256`` for a dataset given as a file
    (part of the ``resume`` match, so another file of the same name is never taken as done)
    and ``data_digest`` (:func:`content_digest`: a record made on data the loader read
    differently is redone).
    """
    seeds = [int(seed)] if isinstance(seed, (int, np.integer)) else [int(s) for s in seed]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seed: expected one seed or a list of distinct seeds, got {seed!r}")
    if database_codes not in DATABASE_CODES:
        raise ValueError(f"database_codes must be one of {DATABASE_CODES}, got {database_codes!r}")
    method_names = list(method_names)
    params = params or {}
    hashing = [n for n in method_names if registry.get(n).output == "binary"]
    if test_folds != 1 and hashing:
        # worded for both callers: --test-folds on the command line, test_folds in Python
        raise ParameterError(f"scoring on {test_folds} test folds applies to the classic protocol only; "
                             f"{', '.join(hashing)} "
                             f"use{'s' if len(hashing) == 1 else ''} the hashing protocol (query split "
                             "against the database)")
    if per_query and hashing and database_codes == "learned":
        # the learned-codes protocol keeps no per-query scores: its records could never satisfy
        # a --per-query resume (redone every time) nor a paired test
        raise ParameterError(f"per-query scores are not kept with database codes 'learned' "
                             f"({', '.join(hashing)}); use the default database codes for paired tests")
    if resume:
        _check_resume_file(resume)  # before loading anything, and before a repair could cut it
    data_options = dict(data_options or {})
    if data_options and not isinstance(dataset, str):
        raise ParameterError("data_options apply to a dataset loaded by name or path, not to a PairedDataset")
    raw = load_dataset(dataset, data_dir=data_dir, **data_options) if isinstance(dataset, str) else dataset
    _preflight(raw, method_names, bits, seeds, params, labeled_fraction, hashing_db, database_codes)
    fingerprint = dataset_fingerprint(dataset, cache_dir)
    digest = content_digest(raw)
    ds = prepare_dataset(raw, data_dir, image_encoder, text_encoder, cache_dir, quiet)
    train = _split(ds, "train")
    val = _split(ds, "val")
    test = _split(ds, "test", "query")
    query = database = None
    if hashing:
        query_split, db_split = hashing_split_names(ds, hashing_db, database_codes)
        query = ds.subset(query_split)
        database = train if db_split == "train" else ds.subset(db_split)
    run_versions = versions()  # package metadata only: nothing is imported
    previous = {_record_key(r): r for r in read_jsonl(resume, repair=True)} if resume else {}
    records = []
    for name in method_names:
        cls = registry.get(name)
        is_hash = cls.output == "binary"
        ks = tuple(map_k) or ((50, 100) if is_hash else ())  # the MAP@k cut-offs scored
        source = registry.source_digest(cls)  # a plugin's code: edited, its records are redone
        for b, sd in ((b, sd) for b in (bits if is_hash else [None]) for sd in seeds):
            settings, kw = _method_kwargs(cls, params.get(name, {}), labeled_fraction, b, sd)
            rec = {"dataset": ds.name, "method": name, "bits": b, "seed": sd, "settings": settings,
                   "database_codes": database_codes if is_hash else None,
                   "image_encoder": image_encoder or ds.meta.get("image_feature"),
                   "text_encoder": text_encoder or ds.meta.get("text_feature")}
            if test_folds != 1:
                rec["test_folds"] = test_folds
            if data_options:
                rec["data_options"] = data_options
            if fingerprint:
                rec["dataset_sha256"] = fingerprint
            if source:
                rec["method_source"] = source
            # known before fitting: part of the resume match, so that a record scored against
            # another database (--hashing-db) is never taken for this one
            rec["protocol"] = _protocol(is_hash, database_codes, query, database, test, test_folds)
            method = registry.create(name, **kw)
            done = previous.get(_record_key(_jsonable(rec)))
            # a record without a MAP@k asked for now (--map-k) is redone, not shown as "-"
            if done is not None and any("map" in done[d] and any(f"map@{k}" not in done[d] for k in ks)
                                        for d in ("i2t", "t2i")):
                done = None
            # a record made with other parameters (a default changed since), on data the loader
            # now reads differently, or ranking ties in database order (before TIES), is redone,
            # not reused (records made before data_digest was kept are taken as they are)
            if done is not None and (not per_query or "per_query" in done["i2t"]) and \
                    done.get("params", {}) == _jsonable(method.get_params()) and \
                    done.get("data_digest", digest) == digest and done.get("ties") == TIES and \
                    done.get("method_source") == rec.get("method_source"):
                records.append(done)
                if on_reused or on_record:  # told apart from a fresh one where the caller asks
                    (on_reused or on_record)(done)
                continue
            t0 = time.perf_counter()
            try:
                method.fit(train, val=val)
                fit_seconds = time.perf_counter() - t0
                res = _score_run(method, is_hash, database_codes, query, database, train, test,
                                 ks, per_query, test_folds, rec)
            except (TrainingDivergedError, NonFiniteScoresError, NoTrainingCodesError) as exc:
                # a diverged method, or one with no learned codes for --database-codes learned
                if failures is None:
                    raise
                failures.append({"method": name, "bits": b, "seed": sd, "error": str(exc)})
                continue
            except Exception as exc:  # noqa: BLE001
                # a plugin's own bug: reported like a diverged run, so the other methods'
                # table is not lost; a built-in method's error is ours and propagates
                if failures is None or registry.is_builtin(cls):
                    raise
                failures.append({"method": name, "bits": b, "seed": sd,
                                 "error": f"{type(exc).__name__}: {exc}"})
                continue
            rec.update({"params": _jsonable(method.get_params()),
                        "kind": method_kind(name, settings), "i2t": res["i2t"], "t2i": res["t2i"],
                        "fit_seconds": fit_seconds, "encode_seconds": res["encode_seconds"],
                        "device": _device_name()})
            rec["versions"] = run_versions
            rec["threads"] = thread_counts()  # after the fit: the pools it loaded are known
            rec["data_digest"] = digest
            rec["ties"] = TIES
            if command:
                rec["command"] = command
            if "mR" in res:
                rec["mR"] = res["mR"]
            rec = _jsonable(rec)
            records.append(rec)
            if resume:
                with open(resume, "a") as f:  # one line per record: an interrupted run keeps the rest
                    f.write(json.dumps(rec, allow_nan=False) + "\n")
            if on_record:
                on_record(rec)
    return records


def _protocol(is_hash: bool, database_codes: str, query: Any, database: Any, test: Any,
              test_folds: int) -> str:
    """The record's ``protocol``: which queries were ranked against which database."""
    if is_hash and database_codes == "learned":
        return (f"hashing: {query.name} vs {database.name} (the training split, whose codes "
                "were learned), database codes = learned training codes")
    return protocol_of(query, database) if is_hash else protocol_of(test, folds=test_folds)


def _score_run(method: Any, is_hash: bool, database_codes: str, query: Any, database: Any, train: Any,
               test: Any, map_k: tuple[int, ...], per_query: bool, test_folds: int, rec: dict) -> dict:
    """The results of one fitted method under the protocol of its kind (:func:`_protocol`;
    ``rec`` gains the folds' spread); ``map_k``: the cut-offs, defaults applied."""
    if is_hash and database_codes == "learned":
        from ..methods.hashing.protocol import evaluate_training_codes

        res = evaluate_training_codes(method, query, database, train=train,
                                      map_k=map_k)
        res["encode_seconds"] = 0.0
    elif is_hash:
        res = evaluate(method, query, database, map_k=map_k, per_query=per_query)
    else:
        view = None
        if getattr(method, "raw_inputs", ()):  # reads raw texts / image files at test time
            from ..methods.deep import raw_view as view
        res = evaluate_folds(method, test, test_folds, view=view, map_k=map_k,
                             per_query=per_query)
        if test_folds != 1:
            rec["fold_std"] = res["fold_std"]
    return res
