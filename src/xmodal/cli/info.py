"""``xmodal methods``: list the registered methods."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    @app.command("methods")
    def methods_cmd(name: str | None = typer.Argument(None, help="one method: its paper, file and "
                                                                   "parameters with defaults"),
                    as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
        """List every method, or describe one: its paper, file and parameters.

        The list gives each method's name, output (real or binary), supervision and summary
        (the first sentence of its docstring). Given a NAME: the file it lives in, its whole
        docstring (which cites its paper) and every parameter with its default and the values
        it allows (what `--set METHOD.PARAM=VALUE` changes).

        Supervision: supervised, semi-supervised, "supervised (if labelled)" (trains on labels
        whenever the data has them), "unsupervised (val labels)" (no labels in training, but
        early stopping picks the epoch by class mAP on a labelled validation split) or
        unsupervised. ``--json`` gives the same as JSON."""
        from ..methods import UnknownMethodError, describe, describe_method

        if name is not None:
            try:
                row = describe_method(name)
            except UnknownMethodError as exc:
                typer.echo(f"error: {exc.args[0]}", err=True)
                raise typer.Exit(2) from None
            if as_json:
                typer.echo(json.dumps(row, indent=1))
                return
            typer.echo(f"{row['name']}: {row['class']} in {row['module']} "
                       f"({row['output']} output, {row['supervision']})\n")
            typer.echo(row["doc"] + "\n")
            typer.echo("parameters (default; allowed values):")
            width = max(map(len, row["params"]), default=0)
            for pname, p in row["params"].items():
                allows = f"; {p['allows']}" if p["allows"] else ""
                typer.echo(f"  {pname:<{width}}  {json.dumps(p['default'])}{allows}")
            return
        rows = describe()
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        for r in rows:
            typer.echo(f"{r['name']:<14} {r['output']:<7} {r['supervision']:<26} {r['summary']}")

    @app.command("encoders")
    def encoders_cmd(modality: str | None = typer.Option(None, "--modality",
                                                         help="only the image or the text encoders"),
                     as_json: bool = typer.Option(False, "--json", help="machine-readable output")) -> None:
        """List the image and text encoders that --image-encoder / --text-encoder take.

        Each row: the spec name, its modality, whether it is fitted on the data (a vocabulary,
        topics, visual words) or pretrained, whether it takes an argument (``name:argument``)
        and a summary. Specs combine: ``A+B`` concatenates two encoders' features
        (docs/encoders.md)."""
        from ..encoders import EncoderError, available_encoders

        try:
            rows = available_encoders(modality)
        except EncoderError as exc:
            typer.echo(f"error: --modality: {exc}", err=True)
            raise typer.Exit(2) from None
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            arg = {"required": "name:ARG", "optional": "[:ARG]"}.get(r["argument"] or "", "")
            kind = "fitted" if r["needs_fit"] else "pretrained"
            typer.echo(f"{r['name']:<{width}}  {r['modality']:<5}  {kind:<10}  {arg:<8}  {r['summary']}")
