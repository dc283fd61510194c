"""The one estimator interface every cross-modal method implements.

Borrowed from scikit-learn: ``__init__`` only stores parameters, ``fit`` validates them in one
place (``_parameter_rules``) and returns ``self``, learned state ends in ``_``. A method maps
image features and text features into one space: real-valued methods return float
embeddings compared by cosine similarity, hashing methods return packed binary codes
(``np.packbits`` rows, ``bits/8`` bytes each) compared by Hamming distance.
"""

from __future__ import annotations

import inspect
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from .._fs import json_default
from ..data.dataset import DataError, PairedDataset

FORMAT_VERSION = 1


class TrainingDivergedError(ValueError):
    """Training produced a NaN or infinite loss or gradient: every later step would only
    spread it through the weights, so the fit stops and names the method, epoch and step."""


class NoTrainingCodesError(DataError):
    """A fitted method holds no learned training codes to fill the database with: a property
    of that run (DCMH / SSAH keep none after an early-stopping hold-out), so ``xmodal bench``
    reports it as that run's failure and goes on with the others. (Here, not beside the
    protocol that raises it, so that the bench catches it without importing the deep hashing
    methods and PyTorch.)"""


class UnknownMethodError(KeyError):
    """A method name this process has no class for (a plugin not loaded?); ``name`` is the
    name asked for. A KeyError, as a missing registry key always was."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.name = name


class NotFittedError(RuntimeError):
    pass


class ParameterError(ValueError):
    pass


# ----------------------------------------------------------------- validation rules
def interval(lo: float | None = None, hi: float | None = None, *, integer: bool = False,
             closed: str = "both") -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        # as scikit-learn's Interval(Integral, ...): 3.0 is not an integer (methods slice and
        # size layers with it), and NaN compares False with every bound, so it would pass
        if isinstance(v, bool) or not isinstance(v, (int, np.integer) if integer else
                                                 (int, float, np.integer, np.floating)):
            return False
        if v != v:
            return False
        if lo is not None and (v < lo or (v == lo and closed in ("right", "neither"))):
            return False
        if hi is not None and (v > hi or (v == hi and closed in ("left", "neither"))):
            return False
        return True
    check.__doc__ = f"{'an integer' if integer else 'a number'} {_interval_text(lo, hi, closed)}"
    return check


def _interval_text(lo: float | None, hi: float | None, closed: str) -> str:
    """``in [0, 1]``, ``in (0, 1]``, ``>= 1``, ``> 0``, ``<= 5`` (an open end is not printed)."""
    lo_in, hi_in = closed in ("both", "left"), closed in ("both", "right")
    if lo is not None and hi is not None:
        return f"in {'[' if lo_in else '('}{lo}, {hi}{']' if hi_in else ')'}"
    if lo is not None:
        return f"{'>=' if lo_in else '>'} {lo}"
    if hi is not None:
        return f"{'<=' if hi_in else '<'} {hi}"
    return "(any value)"


def one_of(*values: Any) -> Callable[[Any], bool]:
    def check(v: Any) -> bool:
        return v in values
    check.__doc__ = f"one of {values}"
    return check


def is_bits(v: Any) -> bool:
    """a positive multiple of 8"""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 and v % 8 == 0


def fit_caller_stacklevel() -> int:
    """The ``stacklevel`` for a warning raised inside :meth:`CrossModalMethod.fit` that names
    the line calling ``fit`` (a script, the benchmark), however many frames of overrides and
    ``super()`` calls lie between; the warning function's caller where ``fit`` is not on the stack."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        if frame.f_code is CrossModalMethod.fit.__code__:
            return level + 1
        frame, level = frame.f_back, level + 1
    return 2


class CrossModalMethod:
    """Base class: image features and text features into one common space.

    Besides each method's own state, ``fit`` learns ``image_dim_`` / ``text_dim_`` and
    ``feature_encoders_`` (the encoder specs that made the training features, by modality,
    or None for released features), saved with the method so a fitted file is only used
    with the encoders it was fitted for (``xmodal index --method FILE.zip``). A side made by
    a fitted encoder (tf-idf, LDA, SIFT words) also keeps that encoder's state,
    ``image_encoder_state_`` / ``text_encoder_state_`` (uint8, its saved file; read it with
    :meth:`feature_encoder`): refitted on other items it would be another encoder."""

    name: ClassVar[str] = ""
    #: "real" (float embeddings, cosine) or "binary" (packed codes, Hamming)
    output: ClassVar[str] = "real"
    #: whether ``fit`` needs labels
    supervised: ClassVar[bool] = False
    #: whether an unsupervised method's loss still uses labels when the data has them
    uses_labels: ClassVar[bool] = False
    #: parameter name -> predicate (with a docstring saying what is allowed); None allows None
    _parameter_rules: ClassVar[dict[str, Any]] = {}

    # --------------------------------------------------------------- parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters by name, as scikit-learn's ``get_params`` (so that
        ``sklearn.base.clone`` copies a method); no parameter is an estimator, so ``deep``
        changes nothing."""
        return {p: getattr(self, p) for p in self._param_names()}

    def set_params(self, **params: Any) -> "CrossModalMethod":
        names = self._param_names()
        for k, v in params.items():
            if k not in names:
                raise ParameterError(f"{type(self).__name__} has no parameter {k!r}; it has {names}")
            setattr(self, k, v)
        return self

    @classmethod
    def _rules(cls) -> dict[str, Any]:
        """Every parameter rule of the class and its bases (a subclass's rule wins)."""
        rules: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            rules.update(getattr(klass, "_parameter_rules", {}) or {})
        return rules

    @staticmethod
    def _rule_text(rule: Any) -> str:
        allowed = rule if isinstance(rule, (list, tuple)) else [rule]
        return " or ".join("None" if r is None else (r.__doc__ or r.__name__) for r in allowed)

    @classmethod
    def parameters(cls) -> dict[str, dict[str, Any]]:
        """Each constructor parameter: its ``default`` and, where a rule checks it in ``fit``,
        what it ``allows`` (the words of the error a bad value gets), else None."""
        sig = inspect.signature(cls.__init__)
        rules = cls._rules()
        return {p: {"default": sig.parameters[p].default,
                    "allows": cls._rule_text(rules[p]) if p in rules else None}
                for p in cls._param_names()}

    def _validate_params(self) -> None:
        rules = self._rules()
        for pname, rule in rules.items():
            if not hasattr(self, pname):  # a rule inherited for a parameter __init__ lacks
                raise ParameterError(f"{type(self).__name__}: has a rule for the parameter {pname!r}, but "
                                     f"__init__ takes no {pname} (a HashingMethod needs bits=...)"
                                     if pname == "bits" else
                                     f"{type(self).__name__}: has a rule for the parameter {pname!r}, but "
                                     f"__init__ takes no {pname}")
            value = getattr(self, pname)
            allowed = rule if isinstance(rule, (list, tuple)) else [rule]
            ok = any((r is None and value is None) or (r is not None and value is not None and r(value))
                     for r in allowed)
            if not ok:
                raise ParameterError(f"{type(self).__name__}: parameter {pname}={value!r} must be "
                                     f"{self._rule_text(rule)}")

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # --------------------------------------------------------------- fitting
    def fit(self, train: PairedDataset, val: PairedDataset | None = None) -> "CrossModalMethod":
        """Learn the common space from the training pairs (and labels when supervised)."""
        self._validate_params()
        X, Y, L = train.pairs()
        if self.supervised and L is None:
            raise DataError(f"{type(self).__name__} is supervised but dataset {train.name!r} has no labels")
        paired = len(np.unique(np.asarray(train.text_to_image)))
        if paired < 2:
            # one image's captions hold nothing to tell images apart: most methods "fitted" a
            # meaningless space in silence (a constant loss), some failed deep in their solver
            raise DataError(f"{type(self).__name__}: dataset {train.name!r} pairs captions with "
                            f"{paired} image{'s' * (paired != 1)}; a common space is fitted on the "
                            "pairs of at least 2 images")
        before = set(vars(self))
        try:
            self._fit_checked(train, val, X, Y, L)
        except BaseException:
            # a fit that fails half-way (diverged, interrupted) leaves no half-trained model
            # behind that encode_* would use: the method is unfitted again
            for name in set(vars(self)) - before:
                del self.__dict__[name]
            vars(self).pop("fitted_", None)
            raise
        self.fitted_ = True
        return self

    def _fit_checked(self, train: PairedDataset, val: PairedDataset | None, X, Y, L) -> None:
        self.image_dim_, self.text_dim_ = int(X.shape[1]), int(Y.shape[1])
        # which encoders made these features: a saved method then refuses others of the same
        # width (mobilenet-v2 vs efficientnet-lite0, both 1280-d) instead of a meaningless space
        self.feature_encoders_ = feature_encoders(train)
        for side in ("image", "text"):  # a refit keeps no state of the previous fit's encoders
            vars(self).pop(f"{side}_encoder_state_", None)
        for side, state in feature_encoder_states(train).items():
            setattr(self, f"{side}_encoder_state_", np.frombuffer(state, dtype=np.uint8).copy())
        self._fit(np.asarray(X, dtype=np.float64 if self._float64 else np.float32),
                  np.asarray(Y, dtype=np.float64 if self._float64 else np.float32),
                  None if L is None else np.asarray(L, dtype=np.float32), train=train, val=val)

    _float64: ClassVar[bool] = True

    def _fit(self, X: np.ndarray, Y: np.ndarray, L: np.ndarray | None, *,
             train: PairedDataset, val: PairedDataset | None) -> None:
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{type(self).__name__} is not fitted; call fit() first")

    def _check_input(self, Z: np.ndarray, dim: int, what: str) -> np.ndarray:
        if hasattr(Z, "toarray") and hasattr(Z, "nnz"):  # a scipy sparse matrix (tf-idf, tags):
            Z = Z.toarray()  # np.asarray would wrap it in a 0-d object array
        Z = np.asarray(Z)
        if Z.dtype == object:
            raise DataError(f"{type(self).__name__}.encode_{what}: expected a numeric array of {what} "
                            f"features, got {type(Z.flat[0]).__name__ if Z.size else 'an empty'} objects")
        if Z.ndim == 1:
            Z = Z[None, :]
        if Z.ndim != 2 or Z.shape[1] != dim:
            raise DataError(f"{type(self).__name__}.encode_{what}: expected {what} features with "
                            f"{dim} columns, got shape {Z.shape}")
        return Z.astype(np.float64 if self._float64 else np.float32, copy=False)

    def encode_images(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self._encode_images(self._check_input(X, self.image_dim_, "images"))

    def encode_texts(self, Y: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return self._encode_texts(self._check_input(Y, self.text_dim_, "texts"))

    def _encode_images(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _encode_texts(self, Y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def feature_encoder(self, modality: str) -> Any:
        """The fitted encoder (an :class:`xmodal.encoders.Encoder`) that made this method's
        ``modality`` training features, as it was fitted; None when that side's encoder needs
        no fitting, or nothing recorded one (released features, files saved before the state
        was kept: see ``feature_encoders_`` for the spec)."""
        self._check_fitted()
        state = getattr(self, f"{modality}_encoder_state_", None)
        if state is None:
            return None
        from ..encoders.base import EncoderError
        from ..encoders.dataset import encoder_from_state

        where = f"{type(self).__name__} {modality}_encoder_state_"
        try:
            enc = encoder_from_state(np.asarray(state, dtype=np.uint8).tobytes(), where)
        except EncoderError as exc:
            raise DataError(str(exc)) from None
        spec = (getattr(self, "feature_encoders_", None) or {}).get(modality)
        dim = self.image_dim_ if modality == "image" else self.text_dim_
        if enc.spec != spec or enc.dim != dim:
            raise DataError(f"{where}: holds a {enc.dim}-d {enc.spec} encoder, but the method was "
                            f"fitted on {dim}-d {spec} features")
        return enc

    # --------------------------------------------------------------- persistence
    def _get_state(self) -> dict[str, Any]:
        """Learned state: every attribute ending in ``_``. Override for non-array state."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}

    def _set_state(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)

    def save(self, path: str | Path) -> Path:
        """Write params and learned state to one zip file (JSON + ``.npy``; no pickle)."""
        self._check_fitted()
        path = Path(path)
        arrays, plain = {}, {}
        for k, v in self._get_state().items():
            if isinstance(v, np.ndarray):
                arrays[k] = v
            elif isinstance(v, (np.integer, np.floating)):
                plain[k] = v.item()
            else:
                try:
                    json.dumps(v)
                except TypeError:
                    raise TypeError(f"{type(self).__name__}: state {k!r} of type {type(v).__name__} "
                                    "cannot be saved; override _get_state") from None
                plain[k] = v
        meta = {"format": FORMAT_VERSION, "method": self.name, "class": type(self).__name__,
                "params": self.get_params(), "state": plain, "arrays": sorted(arrays)}
        tmp = path.with_name(path.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("meta.json", json.dumps(meta, indent=1, default=json_default))
            for k, v in arrays.items():
                buf = io.BytesIO()
                np.save(buf, v, allow_pickle=False)
                zf.writestr(f"{k}.npy", buf.getvalue())
        tmp.replace(path)  # atomic: a crash leaves the old file or the new one
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CrossModalMethod":
        """A method written by :meth:`save`. A file saved before ``feature_encoders_`` was
        recorded loads without it (read it with ``getattr(m, "feature_encoders_", None)``):
        saved again, it stays byte for byte the same, so a shard made ``--like`` an older
        collection keeps sharing its space fingerprint."""
        from . import create

        path = Path(path)
        try:
            with zipfile.ZipFile(path) as zf:
                meta = json.loads(zf.read("meta.json"))
                arrays = {k: np.load(io.BytesIO(zf.read(f"{k}.npy")), allow_pickle=False)
                          for k in meta["arrays"]}
        except FileNotFoundError:
            raise
        except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: not a saved xmodal method, or a corrupt or truncated one ({exc})") from exc
        if meta.get("format") != FORMAT_VERSION:
            raise DataError(f"{path}: saved in format {meta.get('format')!r}; this xmodal reads format "
                            f"{FORMAT_VERSION} (save it again with the xmodal that wrote it, or refit)")
        try:
            obj = create(meta["method"], **_json_params(meta["method"], meta["params"]))
        except UnknownMethodError as exc:  # a plugin not loaded?: callers tell it apart
            raise UnknownMethodError(f"{path}: {exc.args[0]}", exc.name) from None
        except ParameterError as exc:
            raise DataError(f"{path}: {exc}") from None
        if meta.get("class") not in (None, type(obj).__name__):
            raise DataError(f"{path}: holds a {meta['class']}, but {meta['method']!r} is a {type(obj).__name__} here")
        if cls is not CrossModalMethod and not isinstance(obj, cls):
            raise DataError(f"{path}: holds a {meta['class']}, not a {cls.__name__}")
        try:
            obj._validate_params()
            obj._set_state({**meta["state"], **arrays})
        except (ParameterError, ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: its saved state does not fit a {type(obj).__name__} "
                            f"({type(exc).__name__}: {exc})") from None
        return obj


def _json_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` read back from JSON, with a list turned back into a tuple where the
    parameter's default is a tuple (JSON has no tuples: ``hidden=(1024,)`` came back
    ``[1024]``, and the loaded method's repr and ``get_params`` differed from the saved one's)."""
    from . import get

    sig = inspect.signature(get(name).__init__).parameters
    return {k: tuple(v) if isinstance(v, list) and k in sig and isinstance(sig[k].default, tuple) else v
            for k, v in params.items()}


def feature_encoders(ds: PairedDataset) -> dict[str, str] | None:
    """``{"image": spec, "text": spec}`` for the sides of ``ds`` whose features an encoder made
    (``meta["encoding"]``, set by :func:`xmodal.encoders.encode_dataset` and kept in the
    ``.npz`` of ``xmodal encode``); None when none did (released features)."""
    enc = ds.meta.get("encoding") or {}
    out = {}
    for side in ("image", "text"):
        rec = enc.get(f"{side}_encoder")
        if isinstance(rec, dict) and isinstance(rec.get("spec"), str):
            out[side] = rec["spec"]
    return out or None


def feature_encoder_states(ds: PairedDataset) -> dict[str, bytes]:
    """``{modality: state}`` for the sides of ``ds`` made by a fitted encoder whose state
    ``meta["encoding"]`` keeps (:func:`xmodal.encoders.dataset.encoder_state` bytes)."""
    enc = ds.meta.get("encoding") or {}
    out = {}
    for side in ("image", "text"):
        rec = enc.get(f"{side}_encoder")
        if isinstance(rec, dict) and isinstance(rec.get("spec"), str) and rec.get("state") is not None:
            out[side] = bytes(rec["state"])
    return out


def pack_codes(B: np.ndarray) -> np.ndarray:
    """Pack a {-1,+1} or {0,1} (or real: sign) code matrix into uint8 rows."""
    bits = (np.asarray(B) > 0).astype(np.uint8)
    return np.packbits(bits, axis=1)


def unpack_codes(C: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Packed uint8 codes back to a {-1,+1} float matrix."""
    B = np.unpackbits(np.asarray(C, dtype=np.uint8), axis=1)
    if bits is not None:
        B = B[:, :bits]
    return B.astype(np.float32) * 2 - 1


class HashingMethod(CrossModalMethod):
    """Base for hashing: subclasses produce real-valued projections, signs become packed bits."""

    output: ClassVar[str] = "binary"
    _parameter_rules: ClassVar[dict[str, Any]] = {"bits": is_bits}

    def encode_images(self, X: np.ndarray) -> np.ndarray:
        return pack_codes(super().encode_images(X))

    def encode_texts(self, Y: np.ndarray) -> np.ndarray:
        return pack_codes(super().encode_texts(Y))
