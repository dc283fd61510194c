"""Index a folder of images (captions in sidecar ``.txt`` files), a dataset folder (Karpathy
``dataset.json`` / ``dataset_flickr8k.json``, cleaned lists, a release, ``index.mat``), a pairs
file or a named dataset into a collection, fitting the common space on the way."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._fs import blocking_file
from ..data import PairedDataset, load_dataset
from ..data.dataset import DataError
from ..data._probe import PROBE_SAMPLE, any_file
from ..data.karpathy import IMAGE_EXTENSIONS
from .vector import check_spec
from .collection import (DB_NAME, Collection, CollectionError, CollectionExistsError, ImageItem, TextItem,
                         encode_items, get_encoder)
from .store import in_chunks

#: The learned common space fitted on a source's pairs when no fitted model is given.
DEFAULT_METHOD = "cca"
#: Parameters for methods created by name (clamped to what the data allows).
DEFAULT_METHOD_PARAMS: dict[str, dict[str, Any]] = {"cca": {"n_components": 64, "reg": 1e-2}}
#: Parameters chosen on the source's own pairs when not given: 3-fold cross-validation over
#: the images, scored by held-out mean Recall@1/5/10 (:func:`xmodal.evaluation.select_params`).
#: How many components and how much ridge a space needs depends on the data (on a 60-image
#: UCM-Captions sample 64 components overfit badly); sources with fewer than
#: ``SEARCH_MIN_IMAGES`` captioned images keep ``DEFAULT_METHOD_PARAMS``, and the search sees at
#: most ``SEARCH_MAX_IMAGES`` of them.
PARAM_GRIDS: dict[str, dict[str, list[Any]]] = {
    "cca": {"n_components": [8, 16, 32, 64, 128], "reg": [0.1, 1.0, 10.0]}}
SEARCH_MIN_IMAGES = 15
SEARCH_MAX_IMAGES = 1000
SEARCH_FOLDS = 3
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
DEFAULT_TEXT_ENCODER = "minilm"


def _sidecar_captions(image: Path) -> list[str]:
    # NAME.jpg.txt first: it names one image where NAME.txt would serve NAME.jpg and NAME.png
    for cand in (image.with_name(image.name + ".txt"), image.with_suffix(".txt")):
        if cand.is_file():
            try:
                lines = cand.read_text(encoding="utf-8-sig").splitlines()  # Notepad writes a BOM
            except UnicodeDecodeError as exc:
                raise DataError(f"{cand}: captions must be UTF-8 text ({exc.reason})") from exc
            return [ln.strip() for ln in lines if ln.strip()]
    return []


def scan_folder(folder: str | Path) -> tuple[list[ImageItem], list[TextItem]]:
    """Every image under ``folder`` (sorted; key = path relative to it). Captions come from a
    sidecar ``NAME.jpg.txt``, else ``NAME.txt`` (one per non-empty line); an image inside a sub-folder gets the
    sub-folder's name as its label. Symlinked sub-folders are followed, each real folder once;
    hidden ones and collections (a collection kept inside its source) are left out."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    images, texts = [], []
    # Symlinked sub-folders are followed (a photo library linked in from another disk), each
    # real folder once: a link loop, or two links to one folder, cannot repeat or recurse. A
    # link into the folder itself is left out: its target is walked under its own name.
    top = os.path.realpath(root)
    seen = {top}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            full = os.path.join(dirpath, d)
            real = os.path.realpath(full)
            inside = real == top or real.startswith(top.rstrip(os.sep) + os.sep)
            if d.startswith(".") or real in seen or (inside and os.path.islink(full)):
                continue
            # `xmodal index . -c my.xmc`: not its own thumbnails. Any collection's folder,
            # judged by its database file and not opened: a damaged or half-made one is no
            # source of images either, and a scan writes nothing into it
            if os.path.isfile(os.path.join(full, DB_NAME)):
                continue
            seen.add(real)
            keep.append(d)
        dirnames[:] = keep
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.suffix.lower() not in IMAGE_EXTENSIONS or fn.startswith("."):
                continue
            rel = p.relative_to(root).as_posix()
            labels = [rel.split("/")[0]] if "/" in rel else []
            try:
                path = str(p.resolve())
            except (OSError, RuntimeError):  # a symlink loop: kept as is, skipped as unreadable
                path = str(p.absolute())
            images.append(ImageItem(key=rel, path=path, labels=labels))
            for j, cap in enumerate(_sidecar_captions(p)):
                texts.append(TextItem(key=f"{rel}#{j}", text=cap, pair_key=rel, labels=labels))
    if not images:
        raise DataError(f"{root}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return images, texts


def items_from_dataset(ds: PairedDataset) -> tuple[list[ImageItem], list[TextItem]]:
    if ds.image_paths is None:
        raise DataError(f"dataset {ds.name!r} has no image files to index (features only)")
    root = Path(ds.root) if ds.root else None
    keys = []
    for i, p in enumerate(ds.image_paths):
        if ds.image_ids is not None:
            keys.append(str(ds.image_ids[i]))
        elif root is not None and Path(p).is_relative_to(root.resolve()):
            keys.append(Path(p).relative_to(root.resolve()).as_posix())
        else:
            keys.append(str(p))
    names = ds.label_names or []
    img_labels = [[names[j] if j < len(names) else str(j) for j in np.flatnonzero(row)]
                  for row in ds.labels] if ds.labels is not None else [[] for _ in keys]
    images = [ImageItem(key=k, path=str(Path(p).resolve()), labels=l)
              for k, p, l in zip(keys, ds.image_paths, img_labels)]
    seen: dict[int, int] = {}
    texts = []
    for j, (t, i) in enumerate(zip(ds.texts or [], ds.text_to_image)):
        n = seen.get(int(i), 0)
        seen[int(i)] = n + 1
        texts.append(TextItem(key=f"{keys[i]}#{n}", text=t, pair_key=keys[i], labels=img_labels[i]))
    return images, texts


def is_dataset_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a dataset that :func:`~xmodal.data.load_dataset` reads (its
    captions, tags and labels), rather than images with sidecar captions: a Karpathy
    ``dataset.json`` / ``dataset_*.json`` (``dataset_flickr8k.json`` beside
    ``Flicker8k_Dataset/``), cleaned lists (``all_imgs.txt``, ...), ``index.mat`` /
    ``caption.mat`` / ``label.mat``, DCMH ``.mat`` files or a release (NUS-WIDE,
    MIRFlickr-25K, Pascal Sentences, Wikipedia). The loader's own answer
    (:func:`xmodal.data.dataset_layout`), so the two never disagree: a web page or a tool's
    ``dataset_*.json`` saved among photos leaves them a plain image folder."""
    from ..data import dataset_layout

    return dataset_layout(folder) is not None


def scan_source(source: str | Path, data_options: dict[str, Any] | None = None) -> tuple[list[ImageItem], list[TextItem]]:
    """Images and texts from a folder of images, a dataset folder (:func:`is_dataset_folder`:
    its images with the dataset's captions and labels), a pairs file, a Karpathy ``.json`` or
    a dataset name. ``data_options``: keyword arguments of the dataset's loader (refused for
    a plain image folder, which no loader reads)."""
    from ..data import LOADERS

    p = Path(source)
    if str(source) not in LOADERS and not p.exists():
        # a folder mistyped or not there yet: said as such, not as an unknown dataset name
        bare = not (p.suffix or "/" in str(source) or os.sep in str(source) or str(source).startswith("."))
        raise DataError(f"{source}: no such file or folder" +
                        (f" (nor a dataset name: {', '.join(sorted(LOADERS))})" if bare else ""))
    if p.is_dir() and not is_dataset_folder(p):
        if data_options:
            raise DataError(f"{source}: loader options ({', '.join(data_options)}) apply to a dataset, and this "
                            "is not a dataset folder but a folder of images (with sidecar captions)")
        return scan_folder(p)
    images, texts = items_from_dataset(load_dataset(str(source), **(data_options or {})))
    if p.is_dir() and images and not any_file(i.path for i in images[:PROBE_SAMPLE]):
        # A release downloaded without its image archive (Wikipedia's images, NUS-WIDE's
        # Flickr/), or index.mat paths of another machine: say so before encoding nothing.
        raise DataError(f"{images[0].path}: image not found, nor any of the first {min(len(images), PROBE_SAMPLE)} "
                        f"images of the dataset in {p}; put its images where its files name them")
    return images, texts


def _default_params(name: str, params: dict[str, Any] | None, dx: int, dy: int, n: int) -> dict[str, Any]:
    from ..methods import get

    out = dict(DEFAULT_METHOD_PARAMS.get(name, {}))
    out.update(params or {})
    accepted = get(name)._param_names()
    if "n_components" in accepted and "n_components" in out and not (params or {}).get("n_components"):
        out["n_components"] = int(max(1, min(out["n_components"], dx, dy, n - 1)))
    return {k: v for k, v in out.items() if k in accepted}


def _searched_params(name: str, given: dict[str, Any] | None, params: dict[str, Any],
                     ds: PairedDataset, quiet: bool) -> dict[str, Any]:
    """``params`` with the ``PARAM_GRIDS`` entries the caller did not give chosen by
    cross-validation on ``ds`` (unchanged for small sources and methods without a grid)."""
    from ..evaluation.select import select_params

    grid = {k: v for k, v in PARAM_GRIDS.get(name, {}).items() if k not in (given or {})}
    captioned = np.unique(ds.text_to_image)
    if not grid or len(captioned) < SEARCH_MIN_IMAGES:
        return params
    ds = ds.subset(captioned, name=ds.name) if len(captioned) < ds.n_images else ds
    if "n_components" in grid:  # what the images of the smallest training fold allow
        n = min(len(captioned), SEARCH_MAX_IMAGES)
        n_fold = n - math.ceil(n / SEARCH_FOLDS)
        cap = max(1, min(ds.image_features.shape[1], ds.text_features.shape[1], n_fold - 1))
        grid["n_components"] = sorted({min(int(v), cap) for v in grid["n_components"]})
    sel = select_params(name, grid, ds, base=params, folds=SEARCH_FOLDS, max_images=SEARCH_MAX_IMAGES,
                        split=None)  # every pair of the source: an index has no test split to protect
    if not quiet:
        chosen = ", ".join(f"{k}={sel.params[k]}" for k in grid)
        print(f"{name}: {chosen} chosen by {sel.folds}-fold cross-validation on {sel.n_images} "
              f"images (held-out mR {sel.score:.1f})", file=sys.stderr)
    return sel.params


def _check_widths(fitted: Any, method: Any, img_enc: Any, txt_enc: Any) -> None:
    """Refuse, before minutes of encoding, a fitted method whose input widths are not the
    encoders' output widths (the check after encoding stays for encoders whose width only
    encoding tells)."""
    recorded = getattr(fitted, "feature_encoders_", None)
    wrong = []
    for modality, enc in (("image", img_enc), ("text", txt_enc)):
        want = getattr(fitted, f"{modality}_dim_", None)
        try:
            got = enc.dim
        except Exception:  # noqa: BLE001 -- not known before encoding (a model to load, a fit)
            continue
        if isinstance(want, int) and isinstance(got, int) and want != got:
            wrong.append(f"{modality} features of {want} columns, but the {modality} encoder "
                         f"{getattr(enc, 'spec', enc)} gives {got}")
    if not wrong:
        return
    cure = ("pass the encoders it was fitted with (--image-encoder / --text-encoder)" if recorded else
            "it records no encoders (fitted on features made outside xmodal's encoders, such as a "
            "dataset's own .mat features): pass encoders that give the features it was fitted on "
            "(--image-encoder / --text-encoder), or fit it on features of xmodal's encoders "
            "(xmodal encode, then fit on the .npz)")
    raise CollectionError(f"{method}: this fitted method does not take the encoders' features: it "
                          f"takes {'; '.join(wrong)}; {cure}")


def build_collection(source: str | Path, collection_path: str | Path, *, method: Any = None,
                     method_params: dict[str, Any] | None = None,
                     image_encoder: Any = None, text_encoder: Any = None,
                     index: str | None = None, rerank: bool = False, public_read: bool = True,
                     overwrite: bool = False, quiet: bool = False, batch_size: int = 256,
                     like: str | Path | None = None, prune: bool = False,
                     search: bool = True, data_options: dict[str, Any] | None = None) -> Collection:
    """Index ``source`` into the collection at ``collection_path`` and return it open.

    A new collection fits ``method`` (a registry name, default ``DEFAULT_METHOD``; a saved
    method file or a fitted method object) on the source's image/text pairs, with a FAISS
    ``index`` (default ``"Flat"``); a method named by its registry name has
    the ``PARAM_GRIDS`` parameters that ``method_params`` leaves out chosen by
    cross-validation on those pairs (``search=False``: the fixed ``DEFAULT_METHOD_PARAMS``).
    ``method_params`` are checked by the method's own rules before anything is encoded
    (:func:`check_method_params`: an unknown name or a bad value is a ``ParameterError``; with
    a fitted method, which takes none, a :class:`CollectionError`).
    ``image_encoder`` / ``text_encoder``
    (a spec or an encoder object) default to the encoders a fitted method records
    (``feature_encoders_``), else to ``DEFAULT_IMAGE_ENCODER`` / ``DEFAULT_TEXT_ENCODER``; a
    fitted method given other encoders than it records is refused before anything is
    encoded (one that records none is checked on the features' widths). A fitted encoder
    (tf-idf, LDA, SIFT words) a fitted method records is used as the method file keeps it,
    never refitted on the source; a method file that records one without its state (saved by
    an older xmodal) is refused. An existing collection adds what is new or changed, with
    the method, index and encoders it already has (unchanged files cost nothing): leave those
    arguments out (None); one that names something else is refused (:class:`CollectionError`)
    rather than ignored.
    ``like``: a new shard of that collection's common space, with its fitted method and
    encoders (nothing is fitted; ``method``, ``method_params`` and encoder arguments are
    refused, :class:`CollectionError`), searchable
    together with it (:mod:`xmodal.index.shards`). ``prune``: an existing collection also
    drops the items the source no longer has (files deleted or renamed, caption lines
    removed), items added by other means (the HTTP API) included. ``data_options``: keyword
    arguments of the dataset loader that reads ``source`` (:func:`scan_source`).
    """
    progress = False if quiet else None  # None: bars only on a terminal, never into a log file
    asked = {"method": method, "method_params": method_params, "index": index, "rerank": rerank,
             "image_encoder": image_encoder, "text_encoder": text_encoder}
    _refuse_with_like(like, asked)
    method = DEFAULT_METHOD if method is None else method
    index = "Flat" if index is None else index
    images, texts = _scan(source, collection_path, data_options)
    if not overwrite and Collection.exists(collection_path):  # a damaged one can be rebuilt
        return _add_to(collection_path, images, texts, like, quiet, batch_size, prune, asked)
    if like is not None:
        base = _base(like)
        method, image_encoder, text_encoder = base.method, base.encoder("image"), base.encoder("text")
        rerank = rerank or bool(base.fdim)
    _check_method(method, index, source, texts, rerank)
    if like is None:  # (a shard's method_params are refused above)
        check_method_params(method, method_params)
    given = _fitted_method(method)  # loaded now: its recorded encoders are checked before encoding
    if like is None:
        image_encoder, text_encoder = _resolve_encoders(given, method, image_encoder, text_encoder)
    img_enc, txt_enc = get_encoder(image_encoder, "image"), get_encoder(text_encoder, "text")
    # a fitted encoder passed in (a shard's, say) keeps its state: refitting changes the space
    if getattr(txt_enc, "needs_fit", False) and not getattr(txt_enc, "is_fitted", False):
        txt_enc.fit([t.text for t in texts], progress=progress)
    if getattr(img_enc, "needs_fit", False) and not getattr(img_enc, "is_fitted", False):
        img_enc.fit([i.path for i in images], progress=progress)
    if given is not None:
        _check_widths(given, method, img_enc, txt_enc)
    Fi, ok = encode_items(img_enc, [i.path for i in images], progress=progress)
    unread = [images[r].path for r in np.flatnonzero(~ok)]  # the run's `skipped`, as on a rerun
    if not ok.all():
        bad = {images[r].key for r in np.flatnonzero(~ok)}
        if not quiet:
            _say_skipped(unread)
        images = [it for it, good in zip(images, ok) if good]
        Fi = Fi[ok]
        texts = [t for t in texts if t.pair_key not in bad]
    Ft, _ = encode_items(txt_enc, [t.text for t in texts], progress=progress) if texts else (None, None)
    if given is not None:
        fitted = given
    elif isinstance(method, str):
        from ..methods import create, get

        _check_method(method, index, source, texts, skipped=len(unread))  # captions may have gone with their images
        row = {it.key: r for r, it in enumerate(images)}
        t2i = np.asarray([row[t.pair_key] for t in texts])
        params = _default_params(method, method_params, Fi.shape[1], Ft.shape[1], len(texts))
        names = sorted({lab for it in images for lab in it.labels})
        labels = None
        if get(method).supervised:
            bare = [it.key for it in images if not it.labels]
            if not names or bare:
                raise CollectionError(f"{source}: method {method!r} needs a label on every image; "
                                      f"{len(bare)} of {len(images)} {'has' if len(bare) == 1 else 'have'} "
                                      f"none (e.g. {bare[0]}): give labels (sub-folders, "
                                      f"a label column, a labelled dataset), or use an unsupervised method "
                                      f"(default {DEFAULT_METHOD!r}) or a fitted method file")
            col = {n: j for j, n in enumerate(names)}
            labels = np.zeros((len(images), len(names)), dtype=np.uint8)
            for r, it in enumerate(images):
                labels[r, [col[lab] for lab in it.labels]] = 1
        # the fitted method records its encoders (a fitted one's state too), like one fitted
        # on `xmodal encode` features: its file then indexes other sources with them
        from ..encoders.dataset import encoder_state

        encoding = {f"{m}_encoder": {"spec": e.spec, **({"state": encoder_state(e)}
                                                       if getattr(e, "needs_fit", False) else {})}
                    for m, e in (("image", img_enc), ("text", txt_enc))
                    if isinstance(getattr(e, "spec", None), str)}
        ds = PairedDataset(name=Path(str(source)).name, text_to_image=t2i, n_images=len(images),
                           image_features=Fi, text_features=Ft, labels=labels,
                           label_names=names if labels is not None else None,
                           meta={"encoding": encoding})
        if search:
            params = _searched_params(method, method_params, params, ds, quiet)
        fitted = create(method, **params)
        if not quiet:
            print(f"fitting {fitted!r} on {len(texts)} pairs", file=sys.stderr)
        fitted.fit(ds)
    else:
        fitted = method
    if rerank and getattr(fitted, "output", "binary") != "binary":
        raise CollectionError(_RERANK_REAL.format(method=fitted.__class__.__name__))
    if (given is not None or not isinstance(method, str)) and fitted is not None and len(Fi):
        # a fitted method made for other encoders: refused before the collection exists (it
        # was created holding the images and no captions, and every rerun kept it so)
        try:
            fitted.encode_images(Fi[:1])
            if Ft is not None and len(Ft):
                fitted.encode_texts(Ft[:1])
        except DataError as exc:
            raise CollectionError(f"{method}: this fitted method does not take the encoders' features "
                                  f"({exc}); pass the encoders it was fitted with "
                                  f"(--image-encoder / --text-encoder)") from None
    try:
        coll = Collection.create(collection_path, method=fitted, image_encoder=img_enc,
                                 text_encoder=txt_enc, index=index, rerank=rerank,
                                 public_read=public_read, overwrite=overwrite, info={"source": str(source)})
    except CollectionExistsError:
        # Another process created it while this one fitted: add to that one (its method and
        # encoders), as a later run would, instead of deleting its items.
        return _add_to(collection_path, images, texts, like, quiet, batch_size, prune, asked)
    rep = coll.add_items(images, texts, image_features=Fi, text_features=Ft, progress=progress,
                         batch_size=batch_size)
    rep.skipped[:0] = unread  # rep is coll.last_add: dropped before the add, skipped all the same
    return coll


def plan_collection(source: str | Path, collection_path: str | Path, *, method: Any = None,
                    method_params: dict[str, Any] | None = None,
                    index: str | None = None, overwrite: bool = False, like: str | Path | None = None,
                    prune: bool = False, rerank: bool = False, image_encoder: Any = None,
                    text_encoder: Any = None, data_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What :func:`build_collection` with the same arguments would do, without encoding,
    fitting or writing anything (``xmodal index --dry-run``). ``action`` is ``"create"``
    (a new collection, or ``overwrite``: every source item is encoded and the method fitted),
    or ``"update"`` with :meth:`Collection.plan`'s per-modality keys (and ``removed`` with
    ``prune``). What :func:`build_collection` refuses is refused: a fitted method given other
    encoders than it records (or recording a fitted one without its state), an existing
    collection given another method, index, encoder or ``method_params`` than its own, and
    ``method_params`` the method's own rules refuse (:func:`check_method_params`). A new
    collection's plan has the ``params`` asked for."""
    asked = {"method": method, "method_params": method_params, "index": index, "rerank": rerank,
             "image_encoder": image_encoder, "text_encoder": text_encoder}
    _refuse_with_like(like, asked)
    method = DEFAULT_METHOD if method is None else method
    index = "Flat" if index is None else index
    images, texts = _scan(source, collection_path, data_options)
    out: dict[str, Any] = {"source": str(source), "collection": str(collection_path),
                           "images": len(images), "texts": len(texts)}
    if not overwrite and Collection.exists(collection_path):  # a damaged one can be rebuilt
        coll = _existing(collection_path, like)
        try:
            _refuse_other_options(coll, asked)
            return {**out, "action": "update", **coll.plan(images, texts, prune=prune)}
        finally:
            coll.close()
    if like is not None:
        return {**out, "action": "create", "like": str(like), "method": _base(like).stats()["method"]}
    _check_method(method, index, source, texts, rerank)
    check_method_params(method, method_params)
    chosen = _resolve_encoders(_fitted_method(method), method, image_encoder, text_encoder)
    for modality, enc in zip(("image", "text"), chosen):
        _check_encoder(enc, modality)
    return {**out, "action": "create", "method": str(method),
            **({"params": dict(method_params)} if method_params else {})}


def _check_encoder(encoder: Any, modality: str) -> None:
    """What :func:`get_encoder` refuses of ``encoder`` for ``modality`` (an unknown spec, an
    encoder of the other modality), refused without building it (some load their model)."""
    from ..encoders.registry import check_spec

    if isinstance(encoder, str):
        check_spec(encoder, modality)
    else:
        get_encoder(encoder, modality)


def _scan(source: str | Path, collection_path: str | Path,
          data_options: dict[str, Any] | None = None) -> tuple[list[ImageItem], list[TextItem]]:
    # a collection path that cannot be one is refused before any encoding or fitting
    if Path(collection_path).exists() and not Path(collection_path).is_dir():
        raise CollectionError(f"{collection_path}: exists and is not a folder; a collection is a folder")
    # under a file (afile/x.xmc) it could never be created: said now, not after the fitting
    above = blocking_file(collection_path)
    if above is not None:
        raise CollectionError(f"{collection_path}: cannot be created: {above} is not a folder")
    if Path(source).is_dir() and Path(source).resolve() == Path(collection_path).resolve():
        # its thumbnails and uploaded files would be indexed as images on the next run
        raise CollectionError(f"{collection_path}: the collection cannot be the source folder itself; "
                              f"give it its own folder (-c {Path(source).resolve().name}.xmc beside it)")
    return scan_source(source, data_options)


def _base(like: str | Path) -> Collection:
    """The collection a new shard shares its space with."""
    base = Collection.open(like)
    if base.method is None:
        raise CollectionError(f"{like}: holds no fitted method to share (a vectors-only collection)")
    return base


def _existing(collection_path: str | Path, like: str | Path | None) -> Collection:
    coll = Collection.open(collection_path)
    if like is not None and coll.space != Collection.open(like).space:
        raise CollectionError(f"{collection_path}: already exists with another common space "
                              f"than {like}; pass a new path (or --rebuild)")
    return coll


_RERANK_REAL = ("rerank re-orders a binary (hashing) method's Hamming shortlist by its float "
                "projections; method {method!r} is real-valued, its vectors are floats already")


def _is_method_file(method: Any) -> bool:
    """Whether ``method`` names a saved fitted method rather than a registry name: a Path, an
    existing file that is not a method's name (whatever its suffix: ``cca.save("cca.xmodal")``;
    its content is checked when loaded), or a ``.zip`` name (one that is missing is refused
    as such)."""
    if isinstance(method, Path):
        return True
    if not isinstance(method, str):
        return False
    p = Path(method)
    if not p.is_file():
        return p.suffix == ".zip"
    if p.suffix or len(p.parts) > 1 or method.startswith("."):
        return True  # method names have no suffix or folder: no registry lookup needed
    from ..methods import get

    try:  # a bare name that is also a file here: the registry's name wins
        get(method)
        return False
    except KeyError:
        return True


def _load_method_file(path: str | Path) -> Any:
    """The fitted method saved at ``path``, told by content (a zip holding ``meta.json``)."""
    import zipfile

    from ..methods import load

    if not zipfile.is_zipfile(path):
        raise CollectionError(f"{path}: not a saved xmodal method (not a zip file, as "
                              f"method.save(path) writes)")
    return load(str(path))


def _check_method(method: Any, index: str, source: str | Path, texts: list[TextItem],
                  rerank: bool = False, skipped: int = 0) -> None:
    """A method name and index spec that exist, and captions of at least two images to fit it
    on (before encoding, and again once ``skipped`` unreadable images took their captions)."""
    if isinstance(method, str) and not _is_method_file(method):
        from ..methods import get

        check_spec(get(method).output, index)  # its width is known once fitted
        if rerank and get(method).output != "binary":
            raise CollectionError(_RERANK_REAL.format(method=method))
        if not texts:
            raise CollectionError(f"{source}: no captions to fit method {method!r} on; add sidecar "
                                  ".txt captions or pass a fitted method file (--method FILE)")
        captioned = len({t.pair_key for t in texts})
        if captioned < 2:
            # one image has no variance to fit on (CCA divided by n - 1 = 0: a NaN traceback)
            why = f" ({skipped} unreadable image{'s' * (skipped != 1)} skipped)" if skipped else ""
            raise CollectionError(f"{source}: only 1 captioned image to fit method {method!r} on{why}; "
                                  f"a common space is fitted on at least 2: add images with captions "
                                  f"or pass a fitted method file (--method FILE)")
    elif isinstance(method, (str, Path)) and not Path(method).exists():
        raise CollectionError(f"{method}: no such fitted method file")


def check_method_params(method: Any, params: dict[str, Any] | None) -> None:
    """``params`` for fitting ``method`` (a registry name) refused before anything is encoded,
    by the method's own ``_parameter_rules`` on an unfitted instance (what ``fit`` checks
    first): an unknown name or a bad value is a ``ParameterError`` naming the method and
    what it takes. A fitted method (a saved file, an object) takes none: its parameters were
    fixed when it was fitted, so any is refused (:class:`CollectionError`) rather than ignored."""
    if not params:
        return
    if _is_method_file(method) or not isinstance(method, str):
        what = method if isinstance(method, (str, Path)) else f"{type(method).__name__} object"
        raise CollectionError(f"{what}: a fitted method, its parameters fixed when it was fitted; "
                              f"method_params ({', '.join(params)}) apply to a method fitted here "
                              f"(a registry name)")
    from ..methods import create

    create(method, **params)._validate_params()


def _fitted_method(method: Any) -> Any:
    """The fitted method ``method`` names (a saved method file, loaded) or is; None for a name."""
    if _is_method_file(method) and Path(method).exists():
        return _load_method_file(method)
    return None if isinstance(method, (str, Path)) else method


def _spec(encoder: Any) -> str | None:
    """An encoder's spec as :func:`xmodal.encoders.get_encoder` would name it (``" a + b "``
    is ``"a+b"``), without building it (some encoders load their model when built)."""
    if isinstance(encoder, str):
        from ..encoders.registry import is_concat

        return "+".join(part.strip() for part in encoder.split("+")) if is_concat(encoder) else encoder.strip()
    spec = getattr(encoder, "spec", None)
    return spec if isinstance(spec, str) else None


def _needs_fit(spec: str) -> bool:
    """Whether the encoder ``spec`` names learns a state from items (any part of ``a+b``),
    told from the registry without building it (some encoders load their model when built)."""
    from ..encoders.registry import available_encoders, is_concat, parse_spec

    fitted = {row["name"] for row in available_encoders() if row["needs_fit"]}
    parts = spec.split("+") if is_concat(spec) else [spec]
    return any(parse_spec(part.strip())[0] in fitted for part in parts)


def _resolve_encoders(fitted: Any, method: Any, image_encoder: Any, text_encoder: Any) -> tuple[Any, Any]:
    """The encoders to build with: those given, else the ones ``fitted`` records, else the
    defaults. A fitted method given encoders other than it records is refused, naming both:
    features of another encoder (even of the same width) make a meaningless common space.
    A recorded fitted encoder (tf-idf...) comes back as the method keeps it: refitted on the
    source it would learn another vocabulary, so features whose columns mean other words.
    A method recording one without its state (an older file) is refused, unless a fitted
    encoder object of that spec is given."""
    from ..encoders.base import Encoder

    recorded = getattr(fitted, "feature_encoders_", None) or {}
    chosen = {"image": image_encoder, "text": text_encoder}
    defaults = {"image": DEFAULT_IMAGE_ENCODER, "text": DEFAULT_TEXT_ENCODER}
    differ, stateless = [], []
    for modality in ("image", "text"):
        want = recorded.get(modality)
        given = chosen[modality]
        if given is None:
            chosen[modality] = want or defaults[modality]
        elif want and _spec(given) != _spec(want):
            differ.append(f"{modality} encoder {_spec(given)} given, but it was fitted on "
                          f"{want} features")
            continue
        if not want or not _needs_fit(want):
            continue
        try:
            enc = fitted.feature_encoder(modality) if hasattr(fitted, "feature_encoder") else None
        except DataError as exc:
            raise CollectionError(f"{method}: {exc}") from None
        given_fitted = isinstance(given, Encoder) and given.is_fitted
        if enc is None:
            if not given_fitted:  # a fitted encoder object given: trusted (the width check follows)
                stateless.append(f"{modality} encoder {want}")
        elif given_fitted and given.state_hash() != enc.state_hash():
            differ.append(f"{modality} encoder {want} given fitted on other items than the one "
                          f"the method was fitted with")
        elif not given_fitted:
            chosen[modality] = enc
    if differ:
        raise CollectionError(f"{method}: this fitted method cannot take these features: {'; '.join(differ)}; "
                              f"pass the encoders it was fitted with (--image-encoder / --text-encoder), "
                              f"or leave the encoder options out to use them")
    if stateless:
        raise CollectionError(
            f"{method}: fitted on the features of a fitted {' and a fitted '.join(stateless)}, but "
            f"the file does not keep their fitted state (saved by an older xmodal); refitting them "
            f"on this source would learn another vocabulary, features this method cannot read. "
            f"Fit the method again (xmodal encode, then fit on the .npz), or, for a collection's "
            f"method, make the new collection with --like that collection (like=...)")
    return chosen["image"], chosen["text"]


def _refuse_with_like(like: str | Path | None, asked: dict[str, Any]) -> None:
    """A shard ``like`` a collection takes that collection's fitted method and encoders: a
    method, its parameters or an encoder given as well would be ignored, so they are refused."""
    if like is None:
        return
    given = [name for name in ("method", "method_params", "image_encoder", "text_encoder")
             if asked.get(name) is not None]
    if given:
        raise CollectionError(f"like={like}: a shard reuses that collection's fitted method and "
                              f"encoders; {', '.join(given)} would be ignored: leave them out, or "
                              f"build without like to fit a new space")


def _method_digest(method: Any) -> str:
    """A fitted method's content (a saved file or an object, saved for it): what
    :attr:`Collection.space` hashes of it, not the zip's write times."""
    import hashlib
    import tempfile

    from .collection import _digest_file

    h = hashlib.sha256()
    if isinstance(method, (str, Path)):
        _digest_file(h, Path(method))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _digest_file(h, method.save(Path(tmp) / "method.zip"))
    return h.hexdigest()


@dataclass(frozen=True)
class OtherOption:
    """One option asked of an existing collection that it was not made with: ``name`` (the
    :func:`build_collection` argument), ``asked`` (as asked; an encoder by its spec; for
    ``method_params`` the parameters that differ), ``has`` (the collection's own; None: it has
    none) and ``reason`` where the two differ otherwise than by name (a fitted method's
    content, an encoder's fitted state, re-ranking)."""

    name: str
    asked: Any
    has: Any
    reason: str | None = None


class OtherOptionsError(CollectionError):
    """An existing collection asked for another method, index or encoders than its own:
    ``options`` (:class:`OtherOption`) says which, so that a caller (the CLI) can word them
    in its own option names; the message words them as :func:`build_collection`'s arguments."""

    def __init__(self, path: str | Path, options: list[OtherOption]) -> None:
        self.path = Path(path)
        self.options = list(options)
        super().__init__(f"{path}: an existing collection keeps the method, index and encoders it "
                         f"was made with; asked for {'; '.join(map(_argument_words, self.options))}: "
                         f"leave them out to add to it, or pass overwrite=True (xmodal index --rebuild) "
                         f"to start it afresh with them (refits the method)")


def _argument_words(o: OtherOption) -> str:
    """An :class:`OtherOption` in :func:`build_collection`'s argument names."""
    asked = o.asked if isinstance(o.asked, (str, Path, dict, bool)) else f"{type(o.asked).__name__} object"
    if o.name == "rerank":
        return f"rerank ({o.reason})" if o.asked else f"rerank=False ({o.reason})"
    if o.reason and o.name.endswith("_encoder"):
        return f"{o.name} {asked} {o.reason}"
    if o.reason:
        return f"{o.name} {asked} ({o.reason})"
    if o.name == "method":
        return f"method {asked!r} (it has {o.has!r})"
    return f"{o.name} {asked} (it has {o.has or 'none'})"


def other_options(coll: Collection, asked: dict[str, Any]) -> list[OtherOption]:
    """What of ``asked`` (:func:`build_collection`'s method, method_params, index, rerank,
    image_encoder and text_encoder; None or absent: not asked, the collection's own) an
    existing collection does not have, in that order. ``rerank``: True asks for float
    projections, False for none. A method file that does not exist is a
    :class:`CollectionError`; ``method_params`` that the method asked for (else the
    collection's own) does not take are refused first (:func:`check_method_params`)."""
    from .vector import IndexSpecError, normalize_spec

    have = coll.meta.get("method") or {}
    other_fitted = (f"another fitted method than its {have.get('name')}" if have
                    else "it has no fitted method")
    differ: list[OtherOption] = []
    method = asked.get("method")
    if method is not None:
        if _is_method_file(method):
            if not Path(method).is_file():
                raise CollectionError(f"{method}: no such fitted method file")
            if not have or _method_digest(method) != _method_digest(coll.path / have["file"]):
                differ.append(OtherOption("method", method, have.get("name"), other_fitted))
        elif isinstance(method, str):
            if method != have.get("name"):
                differ.append(OtherOption("method", method, have.get("name")))
        elif not have or _method_digest(method) != _method_digest(coll.path / have["file"]):
            differ.append(OtherOption("method", method, have.get("name"), other_fitted))
    params = asked.get("method_params") or {}
    if params and (method is not None or have.get("name")):
        # an unknown name or a bad value is said as such, not as a mere difference
        check_method_params(method if method is not None else have["name"], params)
    stored = have.get("params") or {}
    other = {k: v for k, v in params.items() if k not in stored or stored[k] != v}
    if other:
        differ.append(OtherOption("method_params", other, stored or None))
    index = asked.get("index")
    if index is not None:
        try:
            same = normalize_spec(coll.kind, str(index)) == coll.index_spec
        except IndexSpecError:
            same = False
        if not same:
            differ.append(OtherOption("index", index, coll.index_spec))
    rerank = asked.get("rerank")
    if rerank is not None and bool(rerank) != bool(coll.fdim):
        differ.append(OtherOption("rerank", bool(rerank), bool(coll.fdim),
                                  "it keeps no float projections to re-rank with" if rerank else
                                  "it keeps float projections and re-ranks with them"))
    for modality in ("image", "text"):
        given = asked.get(f"{modality}_encoder")
        if given is None:
            continue
        rec = coll.meta.get("encoders", {}).get(modality)
        has = None if rec is None else rec.get("spec")
        if rec is None or _spec(given) != has:
            differ.append(OtherOption(f"{modality}_encoder", _spec(given), has))
        elif (getattr(given, "needs_fit", False) and getattr(given, "is_fitted", False)
              and given.state_hash() != coll.encoder(modality).state_hash()):
            differ.append(OtherOption(f"{modality}_encoder", _spec(given), has,
                                      "fitted on other items than its own"))
    return differ


def _refuse_other_options(coll: Collection, asked: dict[str, Any]) -> None:
    """An existing collection keeps the method, index and encoders it was made with: asked
    for others (``asked``: :func:`build_collection`'s arguments; None = the collection's;
    ``rerank`` False = not asked), refuse, naming the collection and each option
    (:class:`OtherOptionsError`), rather than silently ignore them. (A method or encoders
    given with ``like`` never get here: :func:`_refuse_with_like`.)"""
    differ = other_options(coll, {**asked, "rerank": asked.get("rerank") or None})
    if differ:
        raise OtherOptionsError(coll.path, differ)


def _held_twice(coll: Collection, new_ids: list[int]) -> list[tuple[str, str]]:
    """(new key, stored key) of the images ``new_ids`` added whose file content an image
    stored before them already has under another key."""
    fresh = sorted({int(i) for i in new_ids})
    new: list[tuple[int, str, str]] = []  # (id, key, content hash) of the new images
    for chunk, marks in in_chunks(fresh):
        new += [r for r in coll.store.query(f"SELECT id, key, content_hash FROM items WHERE modality = "
                                            f"'image' AND id IN ({marks})", chunk) if r[2]]
    # one scan of the older images per chunk of hashes, matched inside SQLite: content_hash has no
    # index, so a join from each new image scanned them all once per image (40 s for 2000
    # new images beside 200,000)
    hashes = sorted({h for _, _, h in new})
    older: dict[str, str] = {}  # content hash -> the earliest older image's key
    for chunk, marks in in_chunks(hashes):
        for h, key in coll.store.query(f"SELECT content_hash, key FROM items WHERE modality = 'image' "
                                       f"AND id < ? AND content_hash IN ({marks}) ORDER BY id", [fresh[0], *chunk]):
            older.setdefault(h, key)
    return [(key, older[h]) for _, key, h in sorted(new) if h in older]


def _say_skipped(paths: list[str]) -> None:
    """The run's one line on unreadable images, a first run's and a rerun's alike: named by
    path, as the encoder's own ``skipping PATH: reason`` warning names each of them."""
    print(f"skipping {len(paths)} unreadable image(s), e.g. {min(paths)}", file=sys.stderr)


def _add_to(collection_path: str | Path, images: list[ImageItem], texts: list[TextItem],
            like: str | Path | None, quiet: bool, batch_size: int, prune: bool = False,
            asked: dict[str, Any] | None = None) -> Collection:
    """Add what is new or changed to an existing collection, with its method and encoders
    (and with ``prune`` remove what the source no longer has); other ones ``asked`` for are
    refused (:func:`_refuse_other_options`)."""
    coll = _existing(collection_path, like)
    if asked is not None:
        try:
            _refuse_other_options(coll, asked)
        except CollectionError:
            coll.close()
            raise
    rep = coll.add_items(images, texts, progress=False if quiet else None, batch_size=batch_size)
    if rep.skipped and not quiet:
        _say_skipped(rep.skipped)
    if rep.moved and not quiet:
        print(f"{rep.moved} image(s) moved: their stored path updated (nothing re-encoded)", file=sys.stderr)
    if rep.relabelled and not quiet:
        print(f"{rep.relabelled} item(s) relabelled: their stored labels updated (nothing re-encoded)",
              file=sys.stderr)
    if prune:
        # an unreadable file is still in the source: its stored item stays
        gone = coll.prune([it.key for it in images] + [t.key for t in texts], actor="index --prune")
        rep.removed = len(gone)  # rep is coll.last_add: the run's report
        if gone and not quiet:
            print(f"pruned {len(gone)} item(s) the source no longer has", file=sys.stderr)
    # after the prune: a renamed photo's old key is gone then, not held twice
    twins = _held_twice(coll, rep.ids) if not quiet else []
    if twins:
        # the same photos given another way (a folder, then a pairs file over it) get other
        # keys: stored twice, every search would show them twice
        print(f"note: {len(twins)} new image(s) have the same content as images already stored under "
              f"other keys (e.g. {twins[0][0]} = {twins[0][1]}): the collection holds them twice; if "
              f"this is the same source given another way, index it alone (--rebuild)", file=sys.stderr)
    return coll
