"""Command-line ``KEY=VALUE`` settings shared by the commands (``xmodal bench --set``,
``--data-option``; ``xmodal index --set``, ``--data-option``): one parser, one wording."""

from __future__ import annotations

import json

import typer


def _json_or_str(raw: str) -> object:
    """A command-line value: JSON when it parses (numbers, true, lists), else the string."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _parse_params(items: list[str]) -> dict[str, dict]:
    """``method.param=value`` (value parsed as JSON when possible). An empty method or
    parameter name, or one parameter given twice (only one value could be used), is refused."""
    out: dict[str, dict] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, pname = key.partition(".")
        method, pname = method.strip(), pname.strip()
        if not sep or not dot or not method or not pname:
            raise typer.BadParameter(f"--set {item!r}: expected METHOD.PARAM=VALUE")
        if pname in out.get(method, {}):
            raise typer.BadParameter(f"--set {method}.{pname} given twice; give each parameter once")
        out.setdefault(method, {})[pname] = _json_or_str(raw)
    return out


def _parse_options(items: list[str], option: str = "--data-option",
                   form: str = "KEY=VALUE") -> dict[str, object]:
    """``key=value`` (value parsed as JSON when possible, else the string); ``option`` and
    ``form`` word the error. A key given twice is refused (only one value could be used)."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{option} {item!r}: expected {form}")
        if key.strip() in out:
            raise typer.BadParameter(f"{option} {key.strip()} given twice; give each once")
        out[key.strip()] = _json_or_str(raw)
    return out
