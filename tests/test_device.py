"""The device setting (xmodal.device): spelling, availability errors, the CLI flag, and that
training and encoding follow it. CUDA itself is checked by benchmarks/device_check.py on a GPU
machine; here the CPU paths and the errors for a missing GPU."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xmodal import methods
from xmodal.cli import app
from xmodal.data import PairedDataset
from xmodal.device import DeviceError, check_spec, device_spec, get_device, set_device

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    monkeypatch.delenv("XMODAL_DEVICE", raising=False)
    set_device(None)
    yield
    set_device(None)


def test_spellings():
    for ok in ("cpu", "CUDA", "cuda:1", "auto", " mps "):
        assert check_spec(ok) == ok.strip().lower()
    for bad in ("gpu", "cuda:", "cuda:x", "tpu", ""):
        with pytest.raises(DeviceError, match="expected cpu, cuda, cuda:N, mps or auto"):
            check_spec(bad)


def test_default_env_and_override(monkeypatch):
    assert device_spec() == ("cpu", "default") and get_device() == torch.device("cpu")
    monkeypatch.setenv("XMODAL_DEVICE", "auto")
    assert device_spec() == ("auto", "$XMODAL_DEVICE")
    assert get_device().type in (("cpu", "mps") if NO_CUDA else ("cuda",))
    set_device("cpu")  # the explicit setting wins over the environment
    assert device_spec() == ("cpu", "device")
    monkeypatch.setenv("XMODAL_DEVICE", "gpu0")
    set_device(None)
    with pytest.raises(DeviceError, match=r"\$XMODAL_DEVICE='gpu0'"):
        get_device()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_missing_gpu_is_a_clear_error_at_once(monkeypatch):
    with pytest.raises(DeviceError, match="PyTorch sees no CUDA GPU"):
        set_device("cuda")
    assert device_spec() == ("cpu", "default")  # a refused setting leaves the old one
    monkeypatch.setenv("XMODAL_DEVICE", "cuda:0")
    with pytest.raises(DeviceError, match=r"\$XMODAL_DEVICE='cuda:0': PyTorch sees no CUDA GPU"):
        get_device()
    # auto falls back to the CPU
    set_device("auto")
    assert get_device().type in ("cpu", "mps")


def _text(res) -> str:
    """The output with rich's box drawing and line wrapping taken out."""
    return " ".join(re.sub(r"[\u2500-\u257f]", " ", res.output).split())


def test_cli_flag_checks_the_device_before_any_work(monkeypatch):
    runner = CliRunner()
    res = runner.invoke(app, ["--device", "gpu", "methods"])
    assert res.exit_code == 2 and "expected cpu, cuda" in _text(res)
    res = runner.invoke(app, ["--device", "cpu", "methods"])
    assert res.exit_code == 0 and "acmr" in res.output
    if NO_CUDA:
        monkeypatch.setenv("XMODAL_DEVICE", "cuda")
        res = runner.invoke(app, ["methods"])
        assert res.exit_code == 2 and "$XMODAL_DEVICE='cuda': PyTorch sees no CUDA GPU" in _text(res)


def _toy(n=120, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    Z = np.eye(3)[labels] * 3 + rng.normal(size=(n, 3))
    X = np.hstack([Z, rng.normal(size=(n, 5))]).astype(np.float32)
    Y = np.hstack([Z @ rng.normal(size=(3, 3)), rng.normal(size=(n, 4))]).astype(np.float32)
    return PairedDataset("toy", np.arange(n), n, image_features=X, text_features=Y, labels=labels,
                         splits={"train": np.arange(n)})


def test_training_follows_the_setting_and_models_move(tmp_path):
    ds = _toy()
    set_device("cpu")
    m = methods.create("acmr", epochs=2, patience=None, verbose=False).fit(ds)
    assert m._device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in m.module_.parameters())
    a = m.encode_images(ds.image_features)
    assert a.dtype == np.float32 and np.isfinite(a).all()
    # saved state is device-free: loading places the module on the device in force
    set_device("auto")
    loaded = methods.load(str(m.save(tmp_path / "m.xmodal")))
    assert loaded._device == get_device()
    np.testing.assert_allclose(loaded.encode_images(ds.image_features), a, atol=1e-5)


def test_deep_hashing_on_the_cpu_setting():
    ds = _toy()
    set_device("cpu")
    m = methods.create("ucch", bits=16, epochs=2, patience=None, verbose=False).fit(ds)
    codes = m.encode_images(ds.image_features)
    assert codes.dtype == np.uint8 and codes.shape == (len(ds.image_features), 2)



@pytest.mark.parametrize("value", ["two", "0", "-2", "1.5"])
def test_an_unusable_thread_budget_is_said_once_not_ignored_in_silence(monkeypatch, value):
    from xmodal import device

    monkeypatch.setattr(device, "_warned", set())
    monkeypatch.setenv("XMODAL_THREADS", value)
    with pytest.warns(UserWarning, match=f"XMODAL_THREADS='{value}' is not a positive integer"):
        assert device.thread_budget() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call is quiet
        assert device.thread_budget() is None
    monkeypatch.setenv("XMODAL_THREADS", "3")
    assert device.thread_budget() == 3
