"""A new method as a plugin: ridge regression from image features into the text space.

The regression baseline of zero-shot and cross-modal learning (a linear map from one modality
to the other, e.g. Frome et al., "DeViSE", NeurIPS 2013, without the ranking loss): both sides
are standardised, ridge regression maps image features onto text features, and retrieval
compares mapped images with texts by cosine. Nothing else is needed to benchmark it:

    xmodal --plugin examples/ridge_bridge.py bench --dataset wikipedia --methods ridge_bridge,cca

See docs/new-method.md for the walk-through.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.linear_model import Ridge

from xmodal.methods import CrossModalMethod, register
from xmodal.methods.base import interval


@register("ridge_bridge")
class RidgeBridge(CrossModalMethod):
    """Image features -> text feature space by ridge regression (strength ``alpha``)."""

    _parameter_rules: ClassVar[dict[str, Any]] = {"alpha": interval(0, None, closed="neither")}

    def __init__(self, alpha: float = 10.0):
        self.alpha = alpha  # __init__ stores parameters only: fit validates them

    def _fit(self, X: np.ndarray, Y: np.ndarray, L: np.ndarray | None, *, train, val) -> None:
        # learned state ends in "_" and is plain arrays, so save/load works unchanged
        self.x_mean_, self.x_std_ = X.mean(0), X.std(0) + 1e-8
        self.y_mean_, self.y_std_ = Y.mean(0), Y.std(0) + 1e-8
        ridge = Ridge(alpha=self.alpha).fit((X - self.x_mean_) / self.x_std_, (Y - self.y_mean_) / self.y_std_)
        self.coef_, self.intercept_ = ridge.coef_.T, ridge.intercept_

    def _encode_images(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.x_mean_) / self.x_std_) @ self.coef_ + self.intercept_

    def _encode_texts(self, Y: np.ndarray) -> np.ndarray:
        return (Y - self.y_mean_) / self.y_std_
