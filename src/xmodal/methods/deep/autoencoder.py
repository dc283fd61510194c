"""Correspondence autoencoder (Feng, Wang & Li 2014)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .. import register
from .._torch import mlp
from ..base import interval, one_of
from ._common import DeepMethod, Standardize, dims, l2n
from .cca import _recon_report


class _CorrAEModule(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, hidden: Any, dim: int, dropout: float = 0.0):
        super().__init__()
        self.image_norm, self.text_norm = Standardize(image_dim), Standardize(text_dim)
        self.enc_x = mlp(dims(image_dim, hidden, dim), dropout=dropout)
        self.enc_y = mlp(dims(text_dim, hidden, dim), dropout=dropout)
        rev = list(reversed(hidden)) if isinstance(hidden, (list, tuple)) else hidden
        # decoders rebuild both views from either code (used by the cross / full variants)
        self.dec_xx = mlp(dims(dim, rev, image_dim))
        self.dec_yy = mlp(dims(dim, rev, text_dim))
        self.dec_xy = mlp(dims(dim, rev, text_dim))
        self.dec_yx = mlp(dims(dim, rev, image_dim))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(self.enc_x(self.image_norm(x)))

    def encode_text(self, y: torch.Tensor) -> torch.Tensor:
        return l2n(self.enc_y(self.text_norm(y)))


@register("corr_ae")
class CorrAE(DeepMethod):
    """Correspondence autoencoder (Feng, Wang & Li, "Cross-modal Retrieval with Correspondence
    Autoencoder", ACM MM 2014): one autoencoder per modality whose code layers are tied by a
    correlation (L2 distance) loss,
    L = (1 - alpha) * (||x - x^||^2 + ||y - y^||^2) + alpha * ||f(x) - g(y)||^2.
    ``variant="cross"`` (Corr-Cross-AE) rebuilds each view from the other's code,
    ``variant="full"`` (Corr-Full-AE) rebuilds both views from both codes. The codes are
    compared by cosine; ``reconstruction_error(X, Y)`` reports the feature MSE of the
    self-reconstructions (cross-reconstructions for the cross variant). Each reconstruction
    error is divided by its feature dimension and the code distance by ``dim`` (the paper sums
    raw squared errors), so that ``alpha`` weighs per-element errors whatever the feature
    sizes. ``dropout`` acts after the encoders' hidden layers.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "alpha": interval(0, 1), "variant": one_of("basic", "cross", "full")}

    def __init__(self, dim: int = 128, hidden: Any = (512,), alpha: float = 0.8,
                 variant: str = "full", epochs: int = 60, batch_size: int = 256, lr: float = 1e-3,
                 weight_decay: float = 1e-5, patience: int | None = 10, val_fraction: float = 0.1,
                 random_state: int = 0, verbose: bool = True, dropout: float = 0.0,
                 lr_schedule: str = "constant", grad_clip: float | None = None):
        self.dim, self.hidden, self.alpha, self.variant = dim, hidden, alpha, variant
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.dropout, self.lr_schedule, self.grad_clip = dropout, lr_schedule, grad_clip

    def _build(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        return _CorrAEModule(image_dim, text_dim, self.hidden, self.dim, self.dropout)

    def _setup(self, X, Y, L) -> None:
        super()._setup(X, Y, L)

    def _batch_loss(self, batch) -> torch.Tensor:
        m = self.module_
        xs, ys = m.image_norm(batch["x"]), m.text_norm(batch["y"])
        cx, cy = m.enc_x(xs), m.enc_y(ys)

        def mse(a, b):
            return ((a - b) ** 2).sum(1).mean()

        rec = 0.0
        if self.variant in ("basic", "full"):
            rec = rec + mse(m.dec_xx(cx), xs) / xs.shape[1] + mse(m.dec_yy(cy), ys) / ys.shape[1]
        if self.variant in ("cross", "full"):
            rec = rec + mse(m.dec_yx(cy), xs) / xs.shape[1] + mse(m.dec_xy(cx), ys) / ys.shape[1]
        corr = mse(cx, cy) / self.dim
        return (1 - self.alpha) * rec + self.alpha * corr

    @torch.no_grad()
    def reconstruct(self, X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Images and texts rebuilt through the autoencoders, in original feature units (the
        cross variant, which has no self-decoders, rebuilds each view from the other one, so
        its rows must be pairs: ``X[ds.text_to_image]`` against ``ds.text_features``)."""
        self._check_fitted()
        X = self._check_input(X, self.image_dim_, "images")
        Y = self._check_input(Y, self.text_dim_, "texts")
        if self.variant == "cross" and len(X) != len(Y):
            raise ValueError(f"variant 'cross' rebuilds each view from the other: X and Y must be "
                             f"row-aligned pairs, got {len(X)} images and {len(Y)} texts "
                             "(pass X[ds.text_to_image] with ds.text_features)")
        m = self.module_.eval()
        cx = m.enc_x(m.image_norm(self._tensor(X)))
        cy = m.enc_y(m.text_norm(self._tensor(Y)))
        if self.variant == "cross":
            xr, yr = m.dec_yx(cy), m.dec_xy(cx)
        else:
            xr, yr = m.dec_xx(cx), m.dec_yy(cy)
        return ((xr * m.image_norm.std + m.image_norm.mean).cpu().numpy(),
                (yr * m.text_norm.std + m.text_norm.mean).cpu().numpy())

    def reconstruction_error(self, X: np.ndarray, Y: np.ndarray) -> dict[str, float]:
        """Mean squared error of the reconstructions (original and standardised units)."""
        return _recon_report(self, X, Y)
