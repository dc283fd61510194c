"""``xmodal methods``: list the registered methods."""

from __future__ import annotations

import inspect
import json

import typer


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


def supervision(cls: type) -> str:
    """unsupervised, supervised, or semi-supervised (a method with a label budget)."""
    if "labeled_fraction" in inspect.signature(cls.__init__).parameters:
        return "semi-supervised"
    return "supervised" if cls.supervised else "unsupervised"


def register(app: typer.Typer) -> None:
    @app.command("methods")
    def methods_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
        """List every method: name, output (real or binary), supervision, summary.

        The summary is the first sentence of the method's docstring (which cites its paper);
        ``--json`` adds ``supervision`` (unsupervised, supervised or semi-supervised) to
        each row."""
        from ..methods import describe, get

        rows = describe()
        for r in rows:
            cls = get(r["name"])
            r["summary"] = first_sentence(cls.__doc__) or r["summary"]
            r["supervision"] = supervision(cls)
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        for r in rows:
            typer.echo(f"{r['name']:<14} {r['output']:<7} {r['supervision']:<16} {r['summary']}")
