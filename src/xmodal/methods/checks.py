"""Does a method keep the estimator contract? ``check_method`` is to xmodal what scikit-learn's
``check_estimator`` is to scikit-learn: run it on a new method before benchmarking it.

>>> from xmodal.methods.checks import check_method
>>> check_method("cca")                       # doctest: +SKIP
['params stored by __init__', 'not fitted error', ...]

The checks fit the method on a small synthetic paired dataset (three classes, two captions
per image, image and text features sharing a class signal and an instance signal, a
train/val/test split) and assert:

- ``__init__`` stores each parameter under its own name and no other public attribute (its
  parents' parameters aside), and a clone from ``get_params()`` (or scikit-learn's
  ``clone``) has the same parameters;
  ``fit`` leaves them unchanged; a hashing method takes ``bits``;
- ``encode_*`` before ``fit`` raises :class:`NotFittedError`; ``fit`` returns ``self``;
- every public attribute ``fit`` adds ends in ``_``;
- outputs: real methods give 2-D float arrays of one width for both modalities, hashing
  methods packed ``uint8`` codes of ``bits / 8`` bytes;
- features of the wrong width are refused with a :class:`DataError` that says so;
- the same ``random_state`` gives the same embeddings (methods that have one);
- labels are used as the class says (``xmodal methods``, the records' ``kind`` and the bench's
  up-front refusals trust it): a ``supervised`` method refuses unlabelled data with a
  :class:`DataError`, any other fits without labels, and one listed as plain "unsupervised"
  (neither ``supervised`` nor ``uses_labels``) gives the same embeddings with labels as without;
- the class is registered (``@register``: ``methods.load`` finds a saved method by its name),
  and ``save`` then ``load`` gives the same embeddings;
- optionally (``min_map``), class mAP on the test split in both directions reaches a floor.
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data.dataset import DataError, PairedDataset
from .base import CrossModalMethod, NotFittedError


class MethodCheckError(AssertionError):
    """A broken contract; the message names the method and the check."""


def toy_dataset(seed: int = 0, n_images: int = 90, captions: int = 2) -> PairedDataset:
    """The checks' data: 3 classes, ``captions`` texts per image, 12-d image and 8-d text
    features that share a class signal and a per-image signal, split 60/15/15 images."""
    rng = np.random.default_rng(seed)
    classes = np.arange(n_images) % 3
    inst = rng.normal(size=(n_images, 3))
    z = np.eye(3)[classes] * 2.5 + inst
    X = np.hstack([z @ rng.normal(size=(3, 6)), rng.normal(size=(n_images, 6))])
    t2i = np.repeat(np.arange(n_images), captions)
    Zt = z[t2i] + 0.3 * rng.normal(size=(len(t2i), 3))
    Y = np.hstack([Zt @ rng.normal(size=(3, 5)), rng.normal(size=(len(t2i), 3))])
    order = rng.permutation(n_images)
    n_tr, n_va = int(n_images * 2 / 3), n_images // 6
    splits = {"train": np.sort(order[:n_tr]), "val": np.sort(order[n_tr:n_tr + n_va]),
              "test": np.sort(order[n_tr + n_va:])}
    return PairedDataset("check-toy", t2i, n_images, image_features=X.astype(np.float32),
                         text_features=Y.astype(np.float32), labels=classes, splits=splits)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def _without_labels(ds: PairedDataset) -> PairedDataset:
    """``ds`` with its labels taken away (features, pairs and splits kept)."""
    return PairedDataset(f"{ds.name}-unlabelled", ds.text_to_image, ds.n_images,
                         image_features=ds.image_features, text_features=ds.text_features,
                         splits=ds.splits, meta=dict(ds.meta))


def _finite_codes(Z: np.ndarray, binary: bool) -> bool:
    return binary or bool(np.isfinite(Z).all())


def _registered(cls: type) -> bool | str:
    """True when ``cls`` is what its registered name finds, else why not (a short clause)."""
    from . import _REGISTRY

    name = getattr(cls, "name", "")
    if not name:
        return ""
    if _REGISTRY.get(name) is not cls:
        return f" (its name {name!r} finds {getattr(_REGISTRY.get(name), '__qualname__', 'nothing')})"
    return True


def _close(a: np.ndarray, b: np.ndarray, binary: bool, atol: float) -> bool:
    return np.array_equal(a, b) if binary else np.allclose(a, b, atol=atol, rtol=1e-4)


def check_method(method: str | CrossModalMethod, data: PairedDataset | None = None, *,
                 min_map: float | None = None, atol: float = 1e-5, **params: Any) -> list[str]:
    """Run every check on ``method`` (a registry name with ``params``, or an unfitted
    instance); return the names of the checks passed, raise :class:`MethodCheckError` at the
    first failure."""
    from . import create, load, supervision

    proto = create(method, **params) if isinstance(method, str) else method
    name = getattr(proto, "name", "") or type(proto).__name__
    ds = data or toy_dataset()
    train, test = ds.subset("train"), ds.subset("test")
    val = ds.subset("val") if "val" in ds.splits else None
    passed: list[str] = []

    def ensure(ok: bool, check: str, detail: str = "") -> None:
        if not ok:
            raise MethodCheckError(f"{name}: {check} failed" + (f": {detail}" if detail else ""))
        passed.append(check)

    def fresh() -> CrossModalMethod:
        return type(proto)(**proto.get_params())

    def sklearn_clone() -> tuple[CrossModalMethod | None, str]:
        from sklearn.base import clone as sk_clone

        try:
            return sk_clone(proto), ""
        except (RuntimeError, TypeError) as exc:  # __init__ alters a parameter, or get_params is off
            return None, f"sklearn.base.clone: {exc}"

    # parameters
    p = proto.get_params()
    sig = [q for q in inspect.signature(type(proto).__init__).parameters if q != "self"]
    ensure(list(p) == sig, "params stored by __init__", f"get_params() gives {list(p)}, __init__ takes {sig}")
    if proto.output == "binary":  # the code length is a parameter: `xmodal bench --bits` sets it
        ensure("bits" in sig, "bits parameter", f"{type(proto).__name__} gives binary codes but takes no "
               f"bits; write __init__(self, bits: int = 32, ...) and store it as self.bits")
    clone = fresh().get_params()
    diff = [k for k in p if not _same(p[k], clone[k])]
    ensure(not diff, "clone keeps params", f"{diff} change when rebuilt from get_params()")
    copy, why = sklearn_clone()  # what model-selection code does with an estimator
    ensure(copy is not None, "scikit-learn clone", why)
    # a public attribute beyond the parameters is missing from get_params() and set_params();
    # as scikit-learn's rule, private state (a property's _value) and the parameters of a
    # parent's __init__ (a subclass fixing one through super().__init__) are the class's own
    parents = {q for c in type(proto).__mro__[1:] if "__init__" in vars(c)
               for q in inspect.signature(c.__init__).parameters}
    extra = sorted(a for a in set(vars(type(proto)(**p))) - set(sig) - parents if not a.startswith("_"))
    ensure(not extra, "__init__ stores only its parameters",
           f"__init__ also sets {extra}; make a fixed value a class attribute, or a parameter")
    # before fit
    m = fresh()
    try:
        m.encode_images(test.image_features)
    except NotFittedError:
        ensure(True, "not fitted error")
    else:
        ensure(False, "not fitted error", "encode_images before fit did not raise NotFittedError")
    before = set(vars(m))
    out = m.fit(train, val=val)
    ensure(out is m, "fit returns self", f"fit returned {type(out).__name__}")
    added = sorted(k for k in set(vars(m)) - before if not k.startswith("_") and not k.endswith("_"))
    ensure(not added, "learned state ends in _", f"fit added public attributes {added}")
    changed = [k for k in p if not _same(p[k], m.get_params()[k])]
    ensure(not changed, "fit leaves params alone", f"fit changed {changed}")
    # outputs
    A, B = m.encode_images(test.image_features), m.encode_texts(test.text_features)
    binary = m.output == "binary"
    if binary:
        bits = getattr(m, "bits", None)
        ok = A.dtype == np.uint8 and B.dtype == np.uint8 and A.shape[1] == B.shape[1]
        ok = ok and (bits is None or A.shape[1] == bits // 8)
        ensure(ok, "packed binary codes", f"got {A.dtype} {A.shape} / {B.dtype} {B.shape} for bits={bits}")
    else:
        ok = A.ndim == B.ndim == 2 and A.shape[1] == B.shape[1] and np.issubdtype(A.dtype, np.floating)
        ensure(ok and np.isfinite(A).all() and np.isfinite(B).all(), "one finite float space",
               f"got {A.dtype} {A.shape} / {B.dtype} {B.shape}")
    ensure(len(A) == test.n_images and len(B) == test.n_texts, "one row per item",
           f"{len(A)} image rows for {test.n_images}, {len(B)} text rows for {test.n_texts}")
    try:
        m.encode_images(np.zeros((2, m.image_dim_ + 1), np.float32))
    except DataError as exc:
        ensure("column" in str(exc), "wrong width refused", f"the error does not say why: {exc}")
    else:
        ensure(False, "wrong width refused", "image features one column too wide were accepted")
    # reproducibility
    if "random_state" in p:
        again = fresh().fit(train, val=val)
        ensure(_close(A, again.encode_images(test.image_features), binary, atol)
               and _close(B, again.encode_texts(test.text_features), binary, atol),
               "same random_state, same result", "two fits with one seed differ")
    # labels: `xmodal methods`, the records' "kind" and the bench's refusals of supervised
    # methods on unlabelled data all trust the class's flags, so the fit must keep to them
    unlabelled = _without_labels(train)
    val_unlabelled = None if val is None else _without_labels(val)
    if m.supervised:
        try:
            fresh().fit(unlabelled, val=val_unlabelled)
        except DataError:
            ensure(True, "unlabelled data refused")
        else:
            ensure(False, "unlabelled data refused", "supervised = True, yet fit accepted data without labels")
    else:
        try:
            bare = fresh().fit(unlabelled, val=val_unlabelled)
            ok = _finite_codes(bare.encode_images(test.image_features), binary) and \
                _finite_codes(bare.encode_texts(test.text_features), binary)
            why = "non-finite embeddings"
        except Exception as exc:  # noqa: BLE001  (any failure here is the finding)
            ok, why = False, f"{type(exc).__name__}: {exc}"
        ensure(ok, "fits without labels", f"supervised is False (the bench runs it on unlabelled data), "
               f"but without labels: {why}; set supervised = True if fit needs labels")
        # a method without a seed may draw differently on every fit: compared only when two
        # fits on the same labelled data agree
        # (the extra fit only for a method listed as plain unsupervised: the others use labels)
        if supervision(type(m)) == "unsupervised" and ("random_state" in p or _close(
                A, fresh().fit(train, val=val).encode_images(test.image_features), binary, atol)):
            ensure(_close(A, bare.encode_images(test.image_features), binary, atol)
                   and _close(B, bare.encode_texts(test.text_features), binary, atol),
                   "unsupervised: labels not read", "listed as unsupervised, yet fitting with labels "
                   "gives other embeddings than without; set uses_labels = True (or supervised = True)")
    # persistence
    registered = _registered(type(m))
    if registered is not True:  # methods.load finds the class by its registered name
        ensure(False, "save/load round trip", f"{type(m).__qualname__} is not registered{registered}: "
               "decorate the class with @register('NAME') (from xmodal.methods) so that methods.load, "
               "xmodal bench and xmodal index find it by NAME")
    with tempfile.TemporaryDirectory() as tmp:
        path = m.save(Path(tmp) / "m.xmodal")
        back = load(str(path))
        ensure(type(back) is type(m) and _close(A, back.encode_images(test.image_features), binary, atol)
               and _close(B, back.encode_texts(test.text_features), binary, atol),
               "save/load round trip", "the loaded method encodes differently")
    if min_map is not None:
        from ..evaluation.protocol import evaluate

        res = evaluate(m, test, train) if binary else evaluate(m, test)
        got = (res["i2t"]["map"], res["t2i"]["map"])
        ensure(min(got) >= min_map, f"class mAP >= {min_map}", f"image->text {got[0]:.3f}, text->image {got[1]:.3f}")
    return passed
