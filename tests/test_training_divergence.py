"""Training that diverges is stopped with a clear error, and DCCA's correlation objective keeps
finite gradients when some outputs are dead (all-zero) units."""
from __future__ import annotations

import math

import pytest
import torch

from xmodal import methods
from xmodal.evaluation.bench import run_bench
from xmodal.methods import ParameterError, TrainingDivergedError
from xmodal.methods.checks import toy_dataset
from xmodal.methods.deep.cca import cca_correlation


def test_cca_correlation_gradient_is_finite_with_dead_units():
    g = torch.Generator().manual_seed(0)
    # 10 rows, 16 outputs, some of them dead ReLU units (all zero): each covariance then has
    # exactly repeated eigenvalues, where an eigendecomposition's gradient is 0/0
    H1, H2 = torch.randn(10, 16, generator=g), torch.randn(10, 16, generator=g)
    H1[:, :3] = 0
    H2[:, 5:7] = 0
    H1.requires_grad_()
    H2.requires_grad_()
    corr = cca_correlation(H1, H2, k=4)
    corr.backward()
    assert torch.isfinite(corr.detach())
    assert torch.isfinite(H1.grad).all() and torch.isfinite(H2.grad).all()
    # the objective itself: the top-4 canonical correlations of the ridge-regularised batch
    with torch.no_grad():
        X, Y = H1 - H1.mean(0), H2 - H2.mean(0)
        S11 = X.T @ X / 9 + 1e-3 * torch.eye(16)
        S22 = Y.T @ Y / 9 + 1e-3 * torch.eye(16)
        w1, V1 = torch.linalg.eigh(S11.double())
        w2, V2 = torch.linalg.eigh(S22.double())
        T = (V1 / w1.sqrt()) @ V1.T @ (X.T @ Y / 9).double() @ (V2 / w2.sqrt()) @ V2.T
        expect = torch.linalg.svdvals(T)[:4].sum()
    assert corr.item() == pytest.approx(float(expect), rel=1e-4)


def test_dcca_trains_with_batches_smaller_than_its_output():
    ds = toy_dataset()
    m = methods.create("dcca", epochs=3, dim=64, batch_size=32, verbose=False)
    m.fit(ds.subset("train"), val=ds.subset("val"))
    assert all(math.isfinite(r["loss"]) for r in m.history_)
    assert all(torch.isfinite(p).all() for p in m.module_.parameters())


def _nan_after(method, steps: int):
    """``method`` whose training loss turns NaN after ``steps`` steps."""
    calls = {"n": 0}
    orig = method._loss

    def loss(batch):
        calls["n"] += 1
        out = orig(batch)
        return out * float("nan") if calls["n"] > steps else out
    method._loss = loss
    return method


def test_a_non_finite_loss_stops_training_naming_method_and_epoch():
    ds = toy_dataset()
    m = _nan_after(methods.create("contrastive", epochs=3, batch_size=16, verbose=False), steps=4)
    with pytest.raises(TrainingDivergedError, match=r"contrastive: training diverged at epoch \d+, step \d+ .*learning rate"):
        m.fit(ds.subset("train"), val=ds.subset("val"))


def test_bench_reports_a_diverged_fit_and_goes_on(monkeypatch):
    from xmodal.methods.deep.ranking import Contrastive

    orig = Contrastive._batch_loss
    monkeypatch.setattr(Contrastive, "_batch_loss", lambda self, batch: orig(self, batch) * float("nan"))
    failures: list = []
    records = run_bench(toy_dataset(), ["contrastive", "cca"], params={"contrastive": {"epochs": 2, "verbose": False}},
                        failures=failures)
    assert [r["method"] for r in records] == ["cca"]
    assert failures and failures[0]["method"] == "contrastive" and "non-finite" in failures[0]["error"]


def test_dcca_refuses_reg_zero_and_a_singular_covariance_is_a_divergence():
    ds = toy_dataset()
    with pytest.raises(ParameterError, match=r"reg.*> 0"):
        methods.create("dcca", reg=0.0, epochs=1, verbose=False).fit(ds.subset("train"))
    H1 = torch.zeros(10, 16)  # dead outputs and no ridge: a singular covariance
    H1[:, 0] = torch.arange(10.0)
    with pytest.raises(TrainingDivergedError, match=r"image outputs' covariance is not positive definite.*raise reg"):
        cca_correlation(H1, torch.randn(10, 16), k=4, r1=0.0)


def test_a_diverged_fit_leaves_the_method_unfitted():
    from xmodal.methods import NotFittedError

    ds = toy_dataset()
    m = _nan_after(methods.create("contrastive", epochs=3, batch_size=16, verbose=False), steps=6)
    with pytest.raises(TrainingDivergedError):
        m.fit(ds.subset("train"), val=ds.subset("val"))
    assert not hasattr(m, "fitted_") and not hasattr(m, "module_") and not hasattr(m, "_X")
    with pytest.raises(NotFittedError):
        m.encode_images(ds.subset("test").image_features)


def test_the_divergence_hint_names_only_parameters_the_method_has():
    ds = toy_dataset()
    m = _nan_after(methods.create("ssah", bits=16, epochs=2, verbose=False), steps=0)
    with pytest.raises(TrainingDivergedError) as err:
        m.fit(ds.subset("train"), val=ds.subset("val"))
    assert "grad_clip" not in str(err.value)


def test_importing_the_bench_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, xmodal.evaluation.bench; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
