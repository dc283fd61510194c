"""Deep CCA (Andrew et al. 2013) and deep canonically correlated autoencoders (Wang et al. 2015)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .. import register
from .._solvers import cca_from_covariances, ridge
from .._torch import mlp
from ..base import TrainingDivergedError, interval
from ._common import NONNEG, DeepMethod, Standardize, dims


def cca_correlation(H1: torch.Tensor, H2: torch.Tensor, k: int, r1: float = 1e-3,
                    r2: float = 1e-3, eps: float = 1e-9) -> torch.Tensor:
    """Sum of the top-``k`` canonical correlations between two batches of outputs: the singular
    values of T = S11^-1/2 S12 S22^-1/2 (Andrew et al. 2013, eq. 10-11), differentiable."""
    m = H1.shape[0]
    H1 = H1 - H1.mean(0, keepdim=True)
    H2 = H2 - H2.mean(0, keepdim=True)
    S11 = H1.T @ H1 / (m - 1) + r1 * torch.eye(H1.shape[1], dtype=H1.dtype, device=H1.device)
    S22 = H2.T @ H2 / (m - 1) + r2 * torch.eye(H2.shape[1], dtype=H2.dtype, device=H2.device)
    S12 = H1.T @ H2 / (m - 1)

    # Whitening by Cholesky factors (S = L L'): L1^-1 S12 L2^-T has the singular values of
    # S11^-1/2 S12 S22^-1/2, and its gradient stays finite when a covariance has repeated
    # eigenvalues (a batch with fewer rows than outputs), where eigh's does not.
    (L1, bad1), (L2, bad2) = torch.linalg.cholesky_ex(S11), torch.linalg.cholesky_ex(S22)
    if bad1.item() or bad2.item():
        raise TrainingDivergedError(
            f"DCCA: the {'image' if bad1.item() else 'text'} outputs' covariance is not positive "
            f"definite in float32 (ridge {r1 if bad1.item() else r2:g} is too small for outputs of "
            f"size {float((H1 if bad1.item() else H2).abs().max()):.3g}); raise reg")
    T = torch.linalg.solve_triangular(L1, S12, upper=False)
    T = torch.linalg.solve_triangular(L2, T.T, upper=False).T
    # eigenvalues of T'T are the squared correlations; +eps keeps sqrt's gradient finite
    ev = torch.linalg.eigvalsh(T.T @ T + eps * torch.eye(T.shape[1], dtype=T.dtype, device=T.device))
    return ev.clamp(min=eps).sqrt().topk(min(k, ev.numel())).values.sum()


class _DCCAModule(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, hidden: Any, dim: int, autoencoder: bool,
                 dropout: float = 0.0):
        super().__init__()
        self.image_norm, self.text_norm = Standardize(image_dim), Standardize(text_dim)
        self.f = mlp(dims(image_dim, hidden, dim), dropout=dropout)
        self.g = mlp(dims(text_dim, hidden, dim), dropout=dropout)
        if autoencoder:
            self.p = mlp(dims(dim, hidden, image_dim))
            self.q = mlp(dims(dim, hidden, text_dim))
        # the linear CCA fitted on training outputs after training (set by _refresh)
        self.register_buffer("mx", torch.zeros(dim))
        self.register_buffer("my", torch.zeros(dim))
        self.register_buffer("A", torch.eye(dim))
        self.register_buffer("B", torch.eye(dim))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return (self.f(self.image_norm(x)) - self.mx) @ self.A

    def encode_text(self, y: torch.Tensor) -> torch.Tensor:
        return (self.g(self.text_norm(y)) - self.my) @ self.B


class _DCCABase(DeepMethod):
    _autoencoder: ClassVar[bool] = False
    _parameter_rules: ClassVar[dict[str, Any]] = {
        "n_components": [None, interval(1, None, integer=True)], "reg": interval(0, None, closed="right")}

    def _build(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        return _DCCAModule(image_dim, text_dim, self.hidden, self.dim, self._autoencoder, self.dropout)

    def _k(self) -> int:
        k = self.n_components or min(self.dim, int(self.image_dim_), int(self.text_dim_))
        return int(min(k, self.dim))

    def _batch_loss(self, batch) -> torch.Tensor:
        m = self.module_
        xs, ys = m.image_norm(batch["x"]), m.text_norm(batch["y"])
        hx, hy = m.f(xs), m.g(ys)
        loss = -cca_correlation(hx, hy, self._k(), self.reg, self.reg)
        if self._autoencoder:
            rec = ((m.p(hx) - xs) ** 2).mean() + ((m.q(hy) - ys) ** 2).mean()
            loss = loss + self.recon_weight * rec
        return loss

    @torch.no_grad()
    def _refresh(self) -> None:
        """Linear CCA on the network outputs of the whole training set (the last stage of DCCA)."""
        m = self.module_
        m.eval()
        Hx = m.f(m.image_norm(self._X)).double().cpu().numpy()
        Hy = m.g(m.text_norm(self._Y)).double().cpu().numpy()
        mx, my = Hx.mean(0), Hy.mean(0)
        Hx, Hy = Hx - mx, Hy - my
        n = len(Hx) - 1
        A, B, _ = cca_from_covariances(ridge(Hx.T @ Hx / n, self.reg), ridge(Hy.T @ Hy / n, self.reg),
                                       Hx.T @ Hy / n, self._k())
        d = self.dim
        Ap, Bp = np.zeros((d, d)), np.zeros((d, d))
        Ap[:, :A.shape[1]], Bp[:, :B.shape[1]] = A, B
        m.mx.copy_(torch.from_numpy(mx).float())
        m.my.copy_(torch.from_numpy(my).float())
        m.A.copy_(torch.from_numpy(Ap).float())
        m.B.copy_(torch.from_numpy(Bp).float())


@register("dcca")
class DCCA(_DCCABase):
    """Deep canonical correlation analysis (Andrew, Arora, Bilmes & Livescu, "Deep Canonical
    Correlation Analysis", ICML 2013): one MLP per view trained to maximise the total canonical
    correlation of their outputs (sum of the top ``n_components`` singular values of
    S11^-1/2 S12 S22^-1/2, ridge ``reg`` on the covariances), computed on large mini-batches;
    a linear CCA on the training outputs gives the final projections (compared by cosine).
    ReLU MLPs trained by Adam on mini-batches replace the paper's full-batch L-BFGS;
    ``dropout`` acts after the hidden layers.
    """

    def __init__(self, dim: int = 64, hidden: Any = (1024,), n_components: int | None = None,
                 reg: float = 1e-3, epochs: int = 60, batch_size: int = 1024, lr: float = 1e-3,
                 weight_decay: float = 1e-5, patience: int | None = 10, val_fraction: float = 0.1,
                 random_state: int = 0, verbose: bool = True, dropout: float = 0.0,
                 lr_schedule: str = "constant", grad_clip: float | None = 5.0):
        self.dim, self.hidden, self.n_components, self.reg = dim, hidden, n_components, reg
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.dropout, self.lr_schedule, self.grad_clip = dropout, lr_schedule, grad_clip


@register("dccae")
class DCCAE(_DCCABase):
    """Deep canonically correlated autoencoders (Wang, Arora, Livescu & Bilmes, "On Deep
    Multi-View Representation Learning", ICML 2015): DCCA plus one decoder per view; the loss
    is -corr(f(x), g(y)) + ``recon_weight`` * (||x - p(f(x))||^2 / dx + ||y - q(g(y))||^2 / dy)
    on standardised features, each squared error divided by its feature dimension (the paper
    sums raw squared errors), so that ``recon_weight`` weighs per-element errors whatever the
    feature sizes. ``reconstruction_error(X, Y)`` reports the feature MSE.
    """

    _autoencoder = True
    _parameter_rules: ClassVar[dict[str, Any]] = {"recon_weight": NONNEG}

    def __init__(self, dim: int = 64, hidden: Any = (1024,), n_components: int | None = None,
                 reg: float = 1e-3, recon_weight: float = 0.1, epochs: int = 60,
                 batch_size: int = 1024, lr: float = 1e-3, weight_decay: float = 1e-5,
                 patience: int | None = 10, val_fraction: float = 0.1, random_state: int = 0,
                 verbose: bool = True, dropout: float = 0.0, lr_schedule: str = "constant",
                 grad_clip: float | None = 5.0):
        self.dim, self.hidden, self.n_components, self.reg = dim, hidden, n_components, reg
        self.recon_weight = recon_weight
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.dropout, self.lr_schedule, self.grad_clip = dropout, lr_schedule, grad_clip

    @torch.no_grad()
    def reconstruct(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each view rebuilt from its own code, in the original feature units."""
        self._check_fitted()
        X = self._check_input(X, self.image_dim_, "images")
        Y = self._check_input(Y, self.text_dim_, "texts")
        m = self.module_.eval()
        xs, ys = m.image_norm(self._tensor(X)), m.text_norm(self._tensor(Y))
        Xr = m.p(m.f(xs)) * m.image_norm.std + m.image_norm.mean
        Yr = m.q(m.g(ys)) * m.text_norm.std + m.text_norm.mean
        return Xr.cpu().numpy(), Yr.cpu().numpy()

    def reconstruction_error(self, X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
        """Mean squared error of the reconstructions (original units and standardised units)."""
        return _recon_report(self, X, Y)


def _recon_report(method, X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    Xr, Yr = method.reconstruct(X, Y)
    X = np.asarray(X, np.float32)
    Y = np.asarray(Y, np.float32)
    m = method.module_
    sx, sy = m.image_norm.std.cpu().numpy(), m.text_norm.std.cpu().numpy()
    return {"image_mse": float(((Xr - X) ** 2).mean()), "text_mse": float(((Yr - Y) ** 2).mean()),
            "image_mse_std": float((((Xr - X) / sx) ** 2).mean()),
            "text_mse_std": float((((Yr - Y) / sy) ** 2).mean())}
