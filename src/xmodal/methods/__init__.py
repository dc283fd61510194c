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

import hashlib
import importlib
import inspect
import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from .base import (CrossModalMethod, HashingMethod, NotFittedError, ParameterError, TrainingDivergedError,
                   UnknownMethodError)

FAMILIES = ("xmodal.methods.subspace", "xmodal.methods.hashing", "xmodal.methods.deep")

#: the built-in methods' names (tests/test_checks.py checks them against the families): a
#: plugin may not take one, told without importing the families (the deep ones import torch)
BUILTIN_NAMES = frozenset({
    "acmr", "cca", "cca_itq", "cfa", "cmfh", "contrastive", "corr_ae", "cvh", "dcca", "dccae", "dcmh",
    "djsrh", "dlfh", "dscmr", "graph", "imh", "jdsh", "kcca", "lsh", "lssh", "mlcca", "pls", "scm",
    "scm_orth", "scm_seq", "seph", "sm", "ssah", "sslpdp", "transformer", "ucch", "uwml", "vsepp"})

_REGISTRY: dict[str, type[CrossModalMethod]] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_loaded: set[str] = set()

T = TypeVar("T", bound=type)


def _origin(cls: type) -> tuple[str, str]:
    """(qualified name, source file) of a class: its module's file, resolved, or the module's
    name where it has no file (a notebook's ``__main__``)."""
    import os
    import sys

    file = getattr(sys.modules.get(cls.__module__), "__file__", None)
    return cls.__qualname__, os.path.realpath(file) if file else cls.__module__


def is_builtin(cls: type) -> bool:
    """Whether ``cls`` is one of xmodal's own methods (not a plugin's or a notebook's)."""
    return cls.__module__.startswith("xmodal.methods.")


def source_digest(cls: type) -> str | None:
    """For a method of one's own, the first 16 hex of the SHA-256 of the code that defines it:
    the file :func:`load_plugin` ran (what ran, even if the file was edited since), else its
    source file as it is now. None for built-in methods (the package version says theirs) and
    for classes with no readable source file (a notebook cell)."""
    if is_builtin(cls):
        return None
    if cls.__module__ in _plugin_digests:
        return _plugin_digests[cls.__module__][:16]
    try:
        src = inspect.getsourcefile(cls)
        return hashlib.sha256(Path(src).read_bytes()).hexdigest()[:16] if src else None
    except (TypeError, OSError):
        return None


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make a method available to :func:`create` under ``name``.

    The same class defined again (same qualified name, same source file: a notebook cell run
    again, or a plugin file both imported and loaded by path through ``$XMODAL_PLUGINS``)
    replaces the earlier definition. Another class under a taken name (another file, or a
    built-in method's name) is a ValueError."""
    def deco(cls: T) -> T:
        if not is_builtin(cls) and name in BUILTIN_NAMES:
            # the built-in families load on first use: a plugin loaded first would take the
            # name unopposed (and that family then fail to import, taking its other methods)
            raise ValueError(f"method name {name!r} registered twice ({cls.__qualname__} in "
                             f"{_origin(cls)[1]}; {name!r} is a built-in xmodal method)")
        old = _REGISTRY.get(name)
        if old is not None and old is not cls and _origin(old) != _origin(cls):
            raise ValueError(f"method name {name!r} registered twice "
                             f"({old.__qualname__} in {_origin(old)[1]}, {cls.__qualname__} in {_origin(cls)[1]})")
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


PLUGIN_ENV = "XMODAL_PLUGINS"
PLUGIN_GROUP = "xmodal.methods"
_plugins_loaded = False
_plugin_digests: dict[str, str] = {}  # module name of a plugin file -> SHA-256 of what was run


def load_plugin(spec: str) -> None:
    """Import a module that registers methods (with :func:`register`): a dotted module name
    or a ``.py`` file path. Errors name the plugin. A file loaded again runs again only when
    it was edited since (its methods then replace their earlier definitions)."""
    import importlib.util
    import sys

    if spec.endswith(".py"):
        path = Path(spec).expanduser().resolve()
        if not path.is_file():
            raise ImportError(f"plugin {spec}: no such file")
        mod_name = f"xmodal_plugin_{path.stem}_{abs(hash(str(path))) % 10**8}"
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise ImportError(f"plugin {spec}: cannot be read ({exc.strerror or exc})") from exc
        if mod_name in sys.modules and _plugin_digests.get(mod_name) == digest:
            return  # loaded already, as it is now (an edited file is run again: a notebook's reload)
        mspec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(mspec)
        sys.modules[mod_name] = module
        try:
            mspec.loader.exec_module(module)
            _plugin_digests[mod_name] = digest
        except Exception as exc:
            del sys.modules[mod_name]
            _plugin_digests.pop(mod_name, None)
            hint = ""
            missing = getattr(exc, "name", None) if isinstance(exc, ModuleNotFoundError) else None
            if missing and ((path.parent / f"{missing.split('.')[0]}.py").is_file()
                            or (path.parent / missing.split(".")[0] / "__init__.py").is_file()):
                # a file loaded by path, unlike `python FILE.py`, puts no folder on sys.path
                hint = (f" ({missing.split('.')[0]} is beside the plugin in {path.parent}, but a plugin "
                        "loaded by path does not put its folder on sys.path: add that folder to "
                        "PYTHONPATH, or make the files a package)")
            raise ImportError(f"plugin {spec}: {type(exc).__name__}: {exc}{hint}") from exc
        return
    try:
        importlib.import_module(spec)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name == spec.split(".")[0]:
            # the `xmodal` command, unlike `python -m`, does not import from the working folder
            file = Path(*spec.split(".")).with_suffix(".py")
            if file.is_file():
                hint = f" (a file {file} is here: give its path, --plugin {file})"
            elif (Path(*spec.split(".")) / "__init__.py").is_file():
                hint = (f" (a package {spec.split('.')[0]}/ is here: install it, pip install -e ., "
                        "or add its folder to PYTHONPATH)")
        raise ImportError(f"plugin {spec!r}: {exc}{hint}") from exc


def _load_plugins() -> None:
    """Once per process: modules named in ``$XMODAL_PLUGINS`` (comma-separated) and installed
    packages' ``xmodal.methods`` entry points, so third-party methods work by name everywhere
    (``xmodal bench --methods mine``, ``methods.load`` of a saved one)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    import os
    from importlib.metadata import entry_points

    for spec in filter(None, (s.strip() for s in os.environ.get(PLUGIN_ENV, "").split(","))):
        load_plugin(spec)
    for ep in entry_points(group=PLUGIN_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken third-party package must not break xmodal
            _IMPORT_ERRORS[f"plugin {ep.name}"] = f"{type(exc).__name__}: {exc}"


def get(name: str) -> type[CrossModalMethod]:
    _load_plugins()
    for fam in FAMILIES:
        if name in _REGISTRY:
            break
        _load_family(fam)
    if name not in _REGISTRY:
        hint = "".join(f"\n  ({m} failed to import: {e})" for m, e in _IMPORT_ERRORS.items())
        raise UnknownMethodError(f"unknown method {name!r}; available: {', '.join(available())} (a method "
                                 f"of your own: load its plugin first, --plugin FILE.py or ${PLUGIN_ENV}, "
                                 f"or methods.load_plugin in Python){hint}", name)
    return _REGISTRY[name]


def create(name: str, **params: Any) -> CrossModalMethod:
    """A new, unfitted method by its registry name. An unknown parameter raises
    :class:`ParameterError` naming the method's parameters."""
    cls = get(name)
    known = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in known.values()):
        unknown = sorted(set(params) - set(known) - {"self"})
        if unknown:
            raise ParameterError(f"{name}: unknown parameter{'s' * (len(unknown) > 1)} "
                                 f"{', '.join(unknown)}; it takes "
                                 f"{', '.join(k for k in known if k != 'self')}")
    return cls(**params)


def available(output: str | None = None) -> list[str]:
    """Every registered method name (optionally only ``"real"`` or ``"binary"`` ones)."""
    _load_plugins()
    for fam in FAMILIES:
        _load_family(fam)
    return sorted(n for n, c in _REGISTRY.items() if output is None or c.output == output)


def first_sentence(doc: str | None) -> str:
    """The first sentence of a docstring's first paragraph, on one line (a citation's full
    stops inside brackets do not end it)."""
    para = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())
    depth = 0
    for i, ch in enumerate(para):
        depth += (ch in "([") - (ch in ")]")
        if ch == "." and depth <= 0 and (i + 1 == len(para) or para[i + 1] == " "):
            return para[: i + 1]
    return para


def supervision(cls: type[CrossModalMethod], detail: bool = True) -> str:
    """How a method uses labels, from its class alone:

    - ``"supervised"``: ``fit`` needs labels (``cls.supervised``);
    - ``"semi-supervised"``: it takes a label budget (a ``labeled_fraction`` parameter);
    - ``"supervised (if labelled)"``: its training loss uses labels whenever the data has
      them and it runs without (a class attribute ``uses_labels = True``, e.g. ``graph``);
    - ``"unsupervised (val labels)"``: its loss uses no labels, but early stopping (a
      ``patience`` parameter, on by default) picks the epoch by class mAP on the validation
      split when that split has labels (the deep methods' default scoring);
    - ``"unsupervised"``: labels are never read.

    ``detail=False`` gives the family alone (``"supervised"`` for a method that uses labels
    when present, ``"unsupervised"`` for one that only stops early on them), as the records'
    ``kind`` names it."""
    params = inspect.signature(cls.__init__).parameters
    if "labeled_fraction" in params:
        return "semi-supervised"
    if cls.supervised:
        return "supervised"
    if cls.uses_labels:
        return "supervised (if labelled)" if detail else "supervised"
    stops_early = "patience" in params and params["patience"].default is not None
    return "unsupervised (val labels)" if detail and stops_early else "unsupervised"


def describe() -> list[dict[str, Any]]:
    """One record per method: name, class, output kind, ``supervised`` (whether ``fit``
    needs labels), ``supervision`` (how it uses labels: :func:`supervision`), and the first
    sentence of its docstring (which cites the paper)."""
    return [_summary(n, _REGISTRY[n]) for n in available()]


def _summary(name: str, cls: type[CrossModalMethod]) -> dict[str, Any]:
    return {"name": name, "class": cls.__name__, "output": cls.output, "supervised": cls.supervised,
            "supervision": supervision(cls), "summary": first_sentence(cls.__doc__)}


def _json_value(value: Any) -> Any:
    """A default as JSON can hold it (a tuple as a list; anything else JSON lacks as its repr)."""
    if isinstance(value, tuple):
        value = list(value)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def describe_method(name: str) -> dict[str, Any]:
    """One method in full: :func:`describe`'s record plus the file it lives in (``module``:
    its path under the ``xmodal`` package, or the plugin's file), its whole docstring
    (``doc``) and its ``params``: each constructor parameter's ``default`` (JSON-safe) and what
    it ``allows`` (:meth:`CrossModalMethod.parameters`). An unknown name raises
    :class:`UnknownMethodError`."""
    cls = get(name)
    source = Path(inspect.getsourcefile(cls) or "")
    package = Path(__file__).resolve().parents[1]
    try:
        module = str(Path("xmodal") / source.resolve().relative_to(package))
    except ValueError:  # a plugin outside the package
        module = str(source)
    params = {p: {"default": _json_value(v["default"]), "allows": v["allows"]}
              for p, v in cls.parameters().items()}
    return {**_summary(name, cls), "module": module, "doc": inspect.cleandoc(cls.__doc__ or ""),
            "params": params}


def load(path: str) -> CrossModalMethod:
    """Load any method saved with ``method.save(path)``."""
    return CrossModalMethod.load(path)


__all__ = ["CrossModalMethod", "HashingMethod", "NotFittedError", "ParameterError", "TrainingDivergedError",
           "UnknownMethodError", "register", "create", "get", "available", "describe", "describe_method",
           "supervision",
           "first_sentence", "load", "load_plugin"]
