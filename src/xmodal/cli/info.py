"""``xmodal methods``: list the registered methods."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("methods")
    def methods_cmd(as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
        """List every method: name, output (real or binary), supervision, summary.

        The summary is the first sentence of the method's docstring (which cites its paper).

        Supervision: supervised, semi-supervised, "supervised (if labelled)" (trains on labels
        whenever the data has them), "unsupervised (val labels)" (no labels in training, but
        early stopping picks the epoch by class mAP on a labelled validation split) or
        unsupervised. ``--json`` gives the same rows as JSON."""
        from ..methods import describe

        rows = describe()
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        for r in rows:
            typer.echo(f"{r['name']:<14} {r['output']:<7} {r['supervision']:<26} {r['summary']}")
