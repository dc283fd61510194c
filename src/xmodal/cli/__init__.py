"""The ``xmodal`` command. Each sub-command lives in its own module with a ``register(app)``
function; heavy imports happen inside the commands so ``xmodal --help`` stays fast."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Cross-modal retrieval: benchmark methods, encode data, index and search.")


DEVICE_OPT = typer.Option(None, "--device", metavar="DEVICE",
                          help="Where encoders and deep methods run: cpu, cuda, cuda:N, mps or auto "
                               "(default: $XMODAL_DEVICE, else cpu).")
PLUGIN_OPT = typer.Option([], "--plugin", metavar="MODULE|FILE.py",
                          help="Import your own methods (registered with xmodal.methods.register) "
                               "first; repeatable. Also $XMODAL_PLUGINS and 'xmodal.methods' entry points.")


# Collections a command opened, closed when it ends (see ``collection._open``).
OPENED: list = []


def _close_opened() -> None:
    while OPENED:
        OPENED.pop().close()


@app.callback()
def _root(ctx: typer.Context, device: str = DEVICE_OPT, plugin: list[str] = PLUGIN_OPT) -> None:
    """Cross-modal retrieval: benchmark methods, encode data, index and search."""
    import os

    ctx.call_on_close(_close_opened)

    if plugin:
        from ..methods import load_plugin

        for spec in plugin:
            try:
                load_plugin(spec)
            except ImportError as exc:
                raise typer.BadParameter(str(exc), param_hint="--plugin") from None
    if os.environ.get("XMODAL_PLUGINS", "").strip():  # methods.PLUGIN_ENV
        from ..methods import PLUGIN_ENV, _load_plugins

        try:  # now, as --plugin's are: a broken one is a usage error, not a traceback later
            _load_plugins()
        except ImportError as exc:
            raise typer.BadParameter(str(exc), param_hint=f"${PLUGIN_ENV}") from None

    from ..device import ENV, DeviceError, get_device, set_device

    set_device(None)  # this command's own setting, not one left by an earlier in-process call
    if device is None and not os.environ.get(ENV, "").strip():
        return  # cpu: nothing to check, and torch stays unimported for quick commands
    try:  # a device this machine lacks fails here, not after an hour of work
        set_device(device) if device is not None else get_device()
    except DeviceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--device" if device else f"${ENV}") from None


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
