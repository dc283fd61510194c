"""Cross-modal methods behind one estimator interface, found by name.

>>> from xmodal import methods
>>> m = methods.create("cca", n_components=10)
>>> methods.available()  # doctest: +SKIP

Families (one module or package each): ``subspace`` (CCA and relatives), ``hashing``
(cross-modal hashing, shallow and deep), ``deep`` (deep real-valued common spaces).
Families are imported on first use, so a method's heavy dependencies (torch) load only when
that family is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, TypeVar

from .base import CrossModalMethod, HashingMethod, NotFittedError, ParameterError

FAMILIES = ("xmodal.methods.subspace", "xmodal.methods.hashing", "xmodal.methods.deep")

_REGISTRY: dict[str, type[CrossModalMethod]] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_loaded: set[str] = set()

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a method available to :func:`create` under ``name``."""
    def deco(cls: T) -> T:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method name {name!r} registered twice "
                             f"({_REGISTRY[name].__qualname__}, {cls.__qualname__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return deco


def _load_family(module: str) -> None:
    if module in _loaded:
        return
    _loaded.add(module)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:  # a missing optional dependency, not a missing family
            _IMPORT_ERRORS[module] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # keep other families usable
        _IMPORT_ERRORS[module] = f"{type(exc).__name__}: {exc}"


def get(name: str) -> type[CrossModalMethod]:
    for fam in FAMILIES:
        if name in _REGISTRY:
            break
        _load_family(fam)
    if name not in _REGISTRY:
        hint = "".join(f"\n  ({m} failed to import: {e})" for m, e in _IMPORT_ERRORS.items())
        raise KeyError(f"unknown method {name!r}; available: {', '.join(available())}{hint}")
    return _REGISTRY[name]


def create(name: str, **params: Any) -> CrossModalMethod:
    """A new, unfitted method by its registry name."""
    return get(name)(**params)


def available(output: str | None = None) -> list[str]:
    """Every registered method name (optionally only ``"real"`` or ``"binary"`` ones)."""
    for fam in FAMILIES:
        _load_family(fam)
    return sorted(n for n, c in _REGISTRY.items() if output is None or c.output == output)


def describe() -> list[dict[str, Any]]:
    """One record per method: name, output kind, supervision, first docstring line."""
    out = []
    for n in available():
        cls = _REGISTRY[n]
        doc = (cls.__doc__ or "").strip().splitlines()
        out.append({"name": n, "class": cls.__name__, "output": cls.output,
                    "supervised": cls.supervised, "summary": doc[0] if doc else ""})
    return out


def load(path: str) -> CrossModalMethod:
    """Load any method saved with ``method.save(path)``."""
    return CrossModalMethod.load(path)


__all__ = ["CrossModalMethod", "HashingMethod", "NotFittedError", "ParameterError", "register",
           "create", "get", "available", "describe", "load"]
