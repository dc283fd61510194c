"""Which PyTorch device the encoders and the deep methods run on.

One setting for the whole process, like ``$XMODAL_THREADS``: ``set_device`` (the CLI's
``xmodal --device``), else ``$XMODAL_DEVICE``, else ``"cpu"``. ``"auto"`` picks CUDA when
PyTorch sees a GPU. The device is where work runs, not part of a model: saved models and
benchmark records do not depend on it, and a model trained on a GPU loads on a CPU.
CPU is the default because its results are bit-for-bit reproducible from the seed.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: `xmodal --help` must stay fast
    import torch

ENV = "XMODAL_DEVICE"
THREADS_ENV = "XMODAL_THREADS"
_SPEC = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")
_current: str | None = None


def thread_budget() -> int | None:
    """``$XMODAL_THREADS``: the threads this process may use (the deep methods' training, the
    encoders' torch threads, decode workers and BLAS, the DCMH image writer); None when unset
    or not a positive integer (then each part picks its own default)."""
    env = os.environ.get(THREADS_ENV, "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    if env and env not in _warned:  # set but unusable (XMODAL_THREADS=two, 0, 1.5): said once
        _warned.add(env)
        warnings.warn(f"{THREADS_ENV}={env!r} is not a positive integer: ignored (each part picks "
                      "its own number of threads)", stacklevel=2)
    return None


_warned: set[str] = set()


def default_threads() -> int:
    """:func:`thread_budget`, else the CPU count capped at 8 (on a loaded machine 1 thread is
    often several times faster than 2: OpenMP threads spin waiting for each other)."""
    return thread_budget() or max(1, min(os.cpu_count() or 1, 8))


class DeviceError(ValueError):
    """A device that is misspelt or that this machine does not have."""


def check_spec(spec: str, source: str = "device") -> str:
    """The spelling alone (no torch import): ``cpu``, ``auto``, ``mps``, ``cuda`` or ``cuda:N``."""
    s = str(spec).strip().lower()
    if not _SPEC.match(s):
        raise DeviceError(f"{source}={spec!r}: expected cpu, cuda, cuda:N, mps or auto")
    return s


def set_device(spec: str | None) -> None:
    """Use ``spec`` from now on in this process (None: back to ``$XMODAL_DEVICE`` / cpu).
    Checked at once, so a machine without the device fails here and not mid-run."""
    global _current
    if spec is None:
        _current = None
        return
    s = check_spec(spec)
    resolve(s, "device")
    _current = s


def device_spec() -> tuple[str, str]:
    """(spec, where it came from) of the device in force."""
    if _current is not None:
        return _current, "device"
    env = os.environ.get(ENV, "").strip()
    if env:
        return check_spec(env, f"${ENV}"), f"${ENV}"
    return "cpu", "default"


def resolve(spec: str, source: str) -> "torch.device":
    import torch

    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"{source}={spec!r}: PyTorch sees no CUDA GPU on this machine "
                              f"(torch {torch.__version__}); use cpu or auto")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{source}={spec!r}: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s)")
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise DeviceError(f"{source}={spec!r}: PyTorch sees no Apple GPU (MPS) here")
    return torch.device(spec)


def get_device() -> "torch.device":
    """The torch device in force (see the module docstring)."""
    spec, source = device_spec()
    return resolve(spec, source)
