"""The benchmark runner behind ``xmodal bench``: fit methods on a dataset's training split and
score them with the dataset's protocol, one record per (method, bits)."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import re
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .. import methods as registry
from ..methods import ParameterError
from .._fs import atomic_write_bytes
from ..data import DataError, PairedDataset, load_dataset
from ..metrics.ranking import NonFiniteScoresError
from ..methods.base import NoTrainingCodesError, TrainingDivergedError
from .protocol import evaluate, evaluate_folds, is_number, mean_scores

SUMMARY_KEYS = ("map", "p@10")
BASELINES = ("lsh", "cca_itq")
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


def method_kind(name: str, params: dict[str, Any] | None = None) -> str:
    """The survey's family of a method: baseline, (semi-/un)supervised, shallow or deep."""
    cls = registry.get(name)
    if name in BASELINES:
        return "baseline"
    kind = registry.supervision(cls, detail=False)
    if kind == "semi-supervised":
        frac = (params or {}).get("labeled_fraction", inspect.signature(cls.__init__).parameters["labeled_fraction"].default)
        kind += f" ({100 * float(frac):g}% labels)"
    # deep: trained by the shared PyTorch trainer (a plugin subclassing DSCMR is deep too;
    # its module name says nothing)
    return kind + (" (deep)" if any(k.__module__ == "xmodal.methods._torch" for k in cls.__mro__) else "")


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


FINGERPRINT_CACHE = "dataset-sha256.json"
_FINGERPRINT_CACHE_SIZE = 256  # entries kept (most recent): one per dataset path, a few KB
_RACY_S = 2.0  # a file modified this recently may change again within its mtime tick: not cached


_BIG_CACHE_ENTRY = 64  # files beyond which an entry keeps digests of its paths and stats, not lists


def _hash_files(files: Sequence[Path], names: Sequence[str] | None = None) -> str:
    """One SHA-256 over each file's name (its file name, or ``names[i]``) and bytes in turn."""
    digest = hashlib.sha256()
    for i, f in enumerate(files):
        digest.update((f.name if names is None else names[i]).encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _read_fingerprint_cache(path: Path | None) -> dict:
    """The cache's entries, or {} when it is absent, unreadable or not what we wrote."""
    if path is None:
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError covers bad JSON and bad UTF-8
        return {}
    entries = doc.get("entries") if isinstance(doc, dict) and doc.get("format") == 1 else None
    return entries if isinstance(entries, dict) else {}


def _write_fingerprint_cache(path: Path, entries: dict) -> None:
    keep = dict(list(entries.items())[-_FINGERPRINT_CACHE_SIZE:])
    try:
        atomic_write_bytes(path, json.dumps({"format": 1, "entries": keep}).encode())
    except OSError:  # read-only or full disk: the next run hashes again, nothing worse
        pass


def content_digest(ds: PairedDataset) -> str:
    """SHA-256 of what a loader made of a dataset: sizes, pairing, splits, labels, texts, image
    names and a sample of released features. Records carry it (``data_digest``), so
    ``--resume`` redoes a record when the loader changed its reading of the same files (a
    caption cap, decoded entities, another split), which :func:`dataset_fingerprint` cannot
    see and named datasets have no file digest for. Image files are named, not read; of
    released features at most 1024 evenly spaced rows are hashed (a changed feature file
    of a dataset given by path changes :func:`dataset_fingerprint` anyway)."""
    h = hashlib.sha256(f"{ds.n_images}\0{len(ds.text_to_image)}\0".encode())
    h.update(np.ascontiguousarray(ds.text_to_image, dtype=np.int64).tobytes())
    for name in sorted(ds.splits):
        h.update(name.encode() + b"\0")
        h.update(np.ascontiguousarray(ds.splits[name], dtype=np.int64).tobytes())
    if ds.labels is not None:
        h.update(b"labels\0" + np.ascontiguousarray(ds.labels, dtype=np.float32).tobytes())
    for tag, strings in (("texts", ds.texts), ("names", ds.image_ids or (
            [Path(p).name for p in ds.image_paths] if ds.image_paths is not None else None))):
        if strings is not None:
            h.update(f"{tag}\0".encode())
            for t in strings:
                h.update(str(t).encode("utf-8", "surrogatepass") + b"\0")
    for tag, F in (("image_features", ds.image_features), ("text_features", ds.text_features)):
        if F is not None:
            rows = np.unique(np.linspace(0, len(F) - 1, min(len(F), 1024)).astype(np.int64)) if len(F) else []
            h.update(f"{tag}{F.shape}\0".encode())
            h.update(np.ascontiguousarray(np.asarray(F)[rows], dtype=np.float32).tobytes())
    return h.hexdigest()


def dataset_fingerprint(dataset: str | PairedDataset,
                        cache_dir: str | os.PathLike | bool | None = None) -> str | None:
    """SHA-256 of the files a dataset given by path is read from; None for a named dataset or
    a dataset object. Records carry it, so ``--resume`` never takes the records of
    ``a/pairs.jsonl`` for those of ``b/pairs.jsonl``, of an edited file (both named ``pairs``),
    or of another download of the same release.

    Which files: those the loader reads (:func:`xmodal.data.dataset_files`): the file itself
    (a pairs file, ``.mat``, ``.npz``, Karpathy ``.json``); for a folder, the lists, tags,
    labels, captions and ``.mat`` files of its layout (cleaned ``all_imgs.txt`` /
    ``all_tags.txt`` / ``all_labels.txt``; NUS-WIDE's ``Imagelist.txt``, ``AllTags1k.txt``,
    ``Concepts81.txt``, ``Labels_*.txt``; MIRFlickr-25K's ``meta/tags/tags<N>.txt``,
    ``common_tags.txt`` and label files; Pascal Sentences' sentence files or page; Wikipedia's
    lists, ``raw_features.mat`` and ``texts/``), each named by its path in the folder. Images
    are never read (tens of GB): the lists name them, so an image added, removed or renamed
    in a list changes the digest, but an image file replaced in place under the same name
    does not. Folders in the layouts fingerprinted before the release loaders (Karpathy
    ``dataset.json`` / ``dataset_*.json``, DCMH and index/caption/label ``.mat``) keep that
    digest: their ``.json`` and ``.mat`` files (also one level down) by file name.

    Hashing multi-GB files costs seconds per run, so the digest is kept in
    ``<cache_dir>/dataset-sha256.json`` (default folder as the feature cache's; ``False``: no
    cache) under the files' absolute paths with their sizes and modification times
    (nanoseconds): unchanged files are not read again, a changed size or time re-hashes. A
    missing, corrupt or unwritable cache only means hashing. The digest is the same with or
    without the cache (one SHA-256 over name and bytes of each file in turn, as records made
    before the cache carry), which is why a dataset's files share one entry."""
    from ..data import LOADERS, dataset_files

    if not isinstance(dataset, str) or dataset in LOADERS:
        return None
    path = Path(dataset)
    if not (path.is_file() or path.is_dir()):
        return None
    source = dataset_files(path)
    files, names = source.files, source.names()
    from ..encoders.cache import resolve_cache_dir

    root = resolve_cache_dir(cache_dir)
    cache_file = None if root is None else root / FINGERPRINT_CACHE
    try:
        stats = [[st.st_size, st.st_mtime_ns] for st in map(os.stat, files)]
        if names is None:
            resolved = [str(f.resolve()) for f in files]
        else:  # one resolve, not one per file (thousands in a release)
            top = str(source.root.resolve())
            resolved = [f"{top}/{n}" for n in names]
    except OSError:  # vanished meanwhile: hashing names the file in its error
        return _hash_files(files, names)
    # The entry of the layouts fingerprinted before keeps its key; a release's (another digest
    # of possibly the same files) is told apart, and a list of 25,000 tag files kept short.
    key = json.dumps(resolved if names is None else {"named": "relative", "files": resolved})
    stat_record: Any = stats
    if len(files) > _BIG_CACHE_ENTRY:
        key = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
        stat_record = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    entries = _read_fingerprint_cache(cache_file)
    hit = entries.get(key)
    if (isinstance(hit, dict) and hit.get("stat") == stat_record and isinstance(hit.get("sha256"), str)
            and re.fullmatch(r"[0-9a-f]{64}", hit["sha256"])):
        return hit["sha256"]
    fingerprint = _hash_files(files, names)
    if cache_file is not None:
        try:
            after = [[st.st_size, st.st_mtime_ns] for st in map(os.stat, files)]
        except OSError:
            after = None
        # Written to while we read it, or so recently that a same-size rewrite could keep its
        # mtime (coarse file-system clocks): not trusted to stay unchanged, so not cached.
        newest = max((m for _, m in stats), default=0) / 1e9
        if after == stats and time.time() - newest > _RACY_S:
            entries.pop(key, None)  # re-inserted last: the most recent entries are the ones kept
            entries[key] = {"stat": stat_record, "sha256": fingerprint}
            _write_fingerprint_cache(cache_file, entries)
    return fingerprint


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


# what else a run's records must share to be pooled over seeds: the parameters the method ran
# with, the digest of the data as read, and the tie order (--resume redoes a record otherwise)
RUN_FIELDS = ("params", "data_digest", "ties", "method_source")
SEED_OWNED = ("random_state", "bits")  # params set per record by the seed and the bit length


# what can tell two summaries of one method apart (named when a table or compare must refuse)
CONFIG_FIELDS = ("dataset", "bits", "settings", "database_codes", "protocol", "image_encoder",
                 "text_encoder", "test_folds", "dataset_sha256", "data_options", *RUN_FIELDS)


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
    mid-write) is ignored, and with ``repair`` cut from the file so appends start clean; any
    other line that is not a record is a :class:`DataError` naming the line."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    lines = path.read_text().splitlines(keepends=True)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i < len(lines):
                hint = (" (a --json file, one JSON list: --resume takes the JSON-lines file that "
                        "--resume writes, one record per line)") if line.lstrip().startswith("[") else ""
                raise DataError(f"{path}: line {i} is not valid JSON{hint}") from None
            if repair:  # that record is simply redone
                atomic_write_bytes(path, "".join(lines[:-1]).encode())
            continue
        out.append(check_record(rec, f"{path}: line {i}"))
    return out


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
        raise ParameterError(f"test_folds applies to the classic protocol only; {', '.join(hashing)} "
                             f"use{'s' if len(hashing) == 1 else ''} the hashing protocol (query split "
                             "against the database)")
    if per_query and hashing and database_codes == "learned":
        # the learned-codes protocol keeps no per-query scores: its records could never satisfy
        # a --per-query resume (redone every time) nor a paired test
        raise ParameterError(f"per-query scores are not kept with database codes 'learned' "
                             f"({', '.join(hashing)}); use the default database codes for paired tests")
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
    if is_hash:
        return f"hashing: {query.name} vs {database.name}, database codes from the hash functions"
    protocol = f"classic: {test.name} vs itself (other modality)"
    if test_folds != 1:
        protocol += f", mean over {test_folds} folds of about {test.n_images // test_folds} images"
    return protocol


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


def config_label(rec: dict) -> str:
    """A record's row name: ``method``, or ``method:param=value,...`` for a run with ``--set``
    settings, the name ``xmodal compare`` takes for that configuration (two settings of one
    method are two rows, which the bare method name could not tell apart)."""
    settings = rec.get("settings") or {}
    return rec["method"] + (":" + ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(settings.items()))
                            if settings else "")


Results = Sequence[dict] | Mapping[str, dict]  # bench records, or evaluate() results by name


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
            out.append({"dataset": "", "method": str(name), "bits": bits, **res})
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


def _line_name(rec: dict) -> str:
    """A record's line in the PR plots: :func:`config_label` without the label budget (one
    ``--labeled-fraction`` for the whole run), so two ``--set`` values of one method are two
    lines, as they are two rows of :func:`format_table`."""
    settings = {k: v for k, v in (rec.get("settings") or {}).items() if k != "labeled_fraction"}
    return config_label({**rec, "settings": settings})


def format_table(records: Results, markdown: bool = False) -> str:
    """Rows = methods (x bits), named by :func:`config_label`; columns = both directions' MAP,
    P@10 (and Recall@K / mR); records summarised over seeds (:func:`summarize_seeds`) show
    ``mean±std``. ``records``: bench records (:func:`run_bench`), or a dict of
    :func:`~xmodal.evaluation.evaluate` results by name (:func:`as_records`); returns the
    table as text (Markdown with ``markdown``)."""
    records = summarize_seeds(as_records(records))
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
        out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)


def _md(cols: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"] + \
        ["| " + " | ".join(r) + " |" for r in rows]


def _one_summary_each(summaries: list[dict], what: str,
                      name: Callable[[dict], str] = lambda r: r["method"]) -> None:
    """Refuse two summaries of one ``name`` (the method's, as the hashing tables name their
    rows; :func:`_line_name` for the PR plot's lines, where two ``--set`` values of one method
    are two lines) at one bit length on one dataset (seeds that ran with other parameters,
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
    their bit length is read from the Hamming PR curve); records without bits are left out."""
    out = []
    recs = [r for r in summarize_seeds(as_records(records)) if r.get("bits")]
    _one_summary_each(recs, "hashing tables")
    _one_protocol_each(recs, "hashing tables")
    for dsname in dict.fromkeys(r["dataset"] for r in recs):
        mine = {(r["method"], r["bits"]): r for r in recs if r["dataset"] == dsname}
        bits = sorted({b for _, b in mine})
        names = list(dict.fromkeys(m for m, _ in mine))
        codes = {r.get("database_codes", "hash") for r in mine.values()}
        note = "learned training codes" if codes == {"learned"} else "codes from the hash functions"
        out.append(f"#### {dsname + ': ' if dsname else ''}MAP (full ranking), image->text | text->image (database: {note})\n")
        rows = []
        for n in names:
            kind = next(r.get("kind", "") for (m, _), r in mine.items() if m == n)
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


def plot_pr_curves(records: Results, path: str | Path, curve: str = "pr_curve") -> Path:
    """One PNG of precision-recall curves: a panel per (dataset, bits, direction), a line per
    method. ``curve="hamming_pr_curve"`` plots Hamming-radius lookup instead of the ranking.
    ``records``: bench records, or a dict of :func:`~xmodal.evaluation.evaluate` results by
    name (a line each). Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = summarize_seeds(as_records(records))  # one line per method: the mean over seeds
    _one_summary_each(records, "PR curves", _line_name)
    _one_protocol_each(records, "PR curves", by_bits=True)
    panels = sorted({(r["dataset"], r["bits"] or 0) for r in records if curve in r["i2t"]})
    if not panels:
        raise DataError(f"no record holds a {curve!r}")
    names = list(dict.fromkeys(_line_name(r) for r in records))  # a line per --set configuration
    # one fixed colour and marker per method across panels (20 colours, then markers differ)
    style = {n: dict(color=plt.cm.tab20(i % 20), marker="os^vD*"[(i // 20) % 6]) for i, n in enumerate(names)}
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for row, (dsname, b) in enumerate(panels):
        for col, d in enumerate(("i2t", "t2i")):
            ax = axes[row][col]
            for r in records:
                if r["dataset"] == dsname and (r["bits"] or 0) == b and curve in r[d]:
                    c = r[d][curve]
                    ax.plot(c["recall"], c["precision"], markersize=3, label=_line_name(r),
                            **style[_line_name(r)])
            ax.set_title(f"{_heading(dsname, f'{b} bits' if b else '')}: "
                         f"{'image->text' if d == 'i2t' else 'text->image'}".lstrip(": "))
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


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


def write_json(records: list[dict], path: str | Path) -> None:
    """The records as one strict JSON list (NaN and inf written as null)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(records), indent=1, allow_nan=False))
    tmp.replace(path)
