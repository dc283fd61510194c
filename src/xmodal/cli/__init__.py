"""The ``xmodal`` command. Each sub-command lives in its own module with a ``register(app)``
function; heavy imports happen inside the commands so ``xmodal --help`` stays fast."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Cross-modal retrieval: benchmark methods, encode data, index and search.")



@app.callback()
def _root() -> None:
    """Cross-modal retrieval: benchmark methods, encode data, index and search."""


COMMAND_MODULES = ("bench", "encode", "collection", "info")

for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name == f"{__name__}.{_name}":
            continue  # command not part of this build
        raise
    _mod.register(app)


def main() -> None:
    app()
