"""Building blocks shared by the deep real-valued methods: towers, pair masks and losses."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._torch import TorchMethod, mlp
from ..base import interval, one_of

POS_INT = interval(1, None, integer=True)
NONNEG = interval(0, None)
UNIT = interval(0, 1)


def l2n(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(z, dim=-1, eps=1e-8)


def pair_mask(batch: dict[str, Any], by: str = "image") -> torch.Tensor:
    """B x B bool: row i's image and column j's text are a positive pair.

    ``by="image"``: the same image (several captions of one image are all positives), or text
    j is word for word one of image i's captions (``batch["has_caption"]``, set by
    :class:`DeepMethod`: caption datasets repeat captions across images, and an identical
    caption is no negative); ``by="label"``: any shared label (supervised semantic positives).
    """
    if by == "label" and batch.get("labels") is not None:
        L = batch["labels"]
        return (L @ L.T) > 0
    im = batch["image"]
    pos = im[:, None] == im[None, :]
    if batch.get("has_caption") is not None:
        pos = pos | batch["has_caption"]
    return pos


def hardest_triplet(S: torch.Tensor, pos: torch.Tensor, margin: float,
                    hardest: bool = True) -> torch.Tensor:
    """VSE++ ranking loss (Faghri et al. 2018) on a B x B image-text similarity matrix whose
    diagonal holds the matching pairs. ``hardest``: only the hardest negative per query (max of
    hinges, "MH"); otherwise the sum of hinges over all negatives ("SH", VSE0)."""
    d = S.diagonal()
    cost_t = (margin + S - d[:, None]).clamp(min=0).masked_fill(pos, 0)  # image query, text negatives
    cost_i = (margin + S - d[None, :]).clamp(min=0).masked_fill(pos, 0)  # text query, image negatives
    if hardest:
        return cost_t.max(dim=1).values.mean() + cost_i.max(dim=0).values.mean()
    return cost_t.sum(dim=1).mean() + cost_i.sum(dim=0).mean()


def info_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Radford et al. 2021) with several positives per row: the target
    distribution is uniform over a row's (or column's) positives. A row or column with no
    positive (an unlabelled image or caption under label positives: COCO keeps images without
    a category) has no target: it is left out of its direction's mean, which was 0/0."""
    tgt = pos.float()
    n_i, n_t = tgt.sum(1), tgt.sum(0)
    li = -(tgt / n_i.clamp(min=1)[:, None] * F.log_softmax(logits, dim=1)).sum(1)
    lt = -(tgt / n_t.clamp(min=1)[None, :] * F.log_softmax(logits, dim=0)).sum(0)

    def mean(per_query: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        kept = per_query[has > 0]  # every query kept: the same mean as before, bit for bit
        return kept.mean() if kept.numel() else per_query.sum() * 0.0

    return 0.5 * (mean(li, n_i) + mean(lt, n_t))


def poly_loss(S: torch.Tensor, pos: torch.Tensor, margin: float = 0.2,
              eps: float = 1e-5) -> torch.Tensor:
    """Universal weighting metric learning (Wei et al., "Universal Weighting Metric Learning for
    Cross-Modal Matching", CVPR 2020): the pair-weighting polynomial loss. For each query, the
    matching pair contributes a decreasing polynomial of its similarity
    ``a2 s^2 + a1 s + a0 = 0.2 s^2 - 0.7 s + 0.5`` (clamped at 0; its slope, the pair weight,
    grows as s falls) and the hardest informative negative (one within ``margin`` of the
    positive) an increasing one ``0.9 s^2 - 0.4 s + 0.03`` (weight grows with s), both
    directions; the coefficients are those of the authors' PolyLoss release. Only informative
    pairs count: a query whose positive already beats every negative by ``margin`` (or whose
    positive similarity is 1) adds nothing, its positive term included, as in that release.
    ``pos[i, j]``: image i and text j match (rows of ``S`` are images)."""
    d = S.diagonal()
    pos_loss = (0.2 * d ** 2 - 0.7 * d + 0.5).clamp(min=0)
    out = 0.0
    # image queries (rows of S) and text queries (rows of S.T, whose positives are pos.T)
    for M, P in ((S, pos), (S.T, pos.T)):
        neg = M.masked_fill(P, -2.0)
        informative = neg + margin > d[:, None]
        hard = torch.where(informative, neg, torch.full_like(neg, -2.0)).max(dim=1).values
        neg_loss = (0.9 * hard ** 2 - 0.4 * hard + 0.03).clamp(min=0)
        active = informative.any(dim=1) & (d < 1 - eps)
        out = out + torch.where(active, pos_loss + neg_loss, torch.zeros_like(d)).mean()
    return out


class Standardize(nn.Module):
    """Fixed per-feature standardisation learned from the training data (saved as buffers)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def set(self, Z: np.ndarray) -> None:
        std = Z.std(0).astype(np.float32) + np.float32(1e-6)
        # A column constant in training is centred, not scaled, as scikit-learn's StandardScaler
        # does (and its test for "constant", in float64: a constant 0.1 has a float32 std of
        # rounding noise): over the 1e-6 floor a test value of 1 became 1e6 (a tag absent from
        # the training texts), and the embedding that column's weights.
        n, eps = len(Z), np.finfo(np.float64).eps
        mean64, var64 = Z.mean(0, dtype=np.float64), Z.var(0, dtype=np.float64)
        constant = var64 <= n * eps * var64 + (n * mean64 * eps) ** 2
        std = np.where(constant, np.float32(1.0), std).astype(np.float32)
        self.mean.copy_(torch.from_numpy(Z.mean(0).astype(np.float32)))
        self.std.copy_(torch.from_numpy(std))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.mean) / self.std


def set_standardizers(module: nn.Module, X: np.ndarray, Y: np.ndarray) -> None:
    """Fill ``module.image_norm`` / ``module.text_norm`` from the training features."""
    if isinstance(getattr(module, "image_norm", None), Standardize):
        module.image_norm.set(X)
    if isinstance(getattr(module, "text_norm", None), Standardize):
        module.text_norm.set(Y)


class Towers(nn.Module):
    """One MLP per modality (on standardised inputs) into a shared space, L2-normalised."""

    def __init__(self, image_dims: list[int], text_dims: list[int], dropout: float = 0.0,
                 normalize: bool = True, norm: bool = False):
        super().__init__()
        self.image_norm, self.text_norm = Standardize(image_dims[0]), Standardize(text_dims[0])
        self.image = mlp(image_dims, dropout=dropout, norm=norm)
        self.text = mlp(text_dims, dropout=dropout, norm=norm)
        self.normalize = normalize

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        z = self.image(self.image_norm(x))
        return l2n(z) if self.normalize else z

    def encode_text(self, y: torch.Tensor) -> torch.Tensor:
        z = self.text(self.text_norm(y))
        return l2n(z) if self.normalize else z


def dims(inp: int, hidden: int | tuple | list | None, out: int) -> list[int]:
    if hidden is None or hidden == 0:
        return [inp, out]
    if isinstance(hidden, (int, np.integer)):
        return [inp, int(hidden), out]
    return [inp, *[int(h) for h in hidden], out]


def hidden_rule(v: Any) -> bool:
    """0, a positive integer or a list of positive integers (hidden layer widths)"""
    if v is None or v == 0:
        return True
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return v > 0
    return isinstance(v, (list, tuple)) and all(isinstance(h, (int, np.integer)) and h > 0 for h in v)


class DeepMethod(TorchMethod):
    """Parameters shared by every deep real-valued method (defaults tuned on UCM-Captions val)."""

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "dim": POS_INT, "hidden": [None, hidden_rule], "dropout": interval(0, 1, closed="left"),
        "lr_schedule": one_of("constant", "cosine"), "grad_clip": [None, interval(0, None, closed="neither")],
    }

    def _setup(self, X, Y, L) -> None:
        set_standardizers(self.module_, X, Y)
        self._caption_index(Y)

    def _caption_index(self, Y: np.ndarray) -> None:
        """Caption ids (identical feature rows = identical captions) and the (image, caption
        id) pairs that occur, so that repeated captions are positives of every image that has
        them. The pairs are kept as sorted int64 keys: memory grows with the texts, not with
        images x captions (which on COCO would be tens of GB)."""
        _, cap = np.unique(Y, axis=0, return_inverse=True)
        cap = cap.ravel().astype(np.int64)
        if len(np.unique(cap)) == len(cap):
            self._cap = None  # no repeats: the image mask says it all
            return
        self._n_caps = int(cap.max()) + 1
        owns = np.unique(self._image.cpu().numpy().astype(np.int64) * self._n_caps + cap)
        self._cap, self._owns = self._tensor(cap), self._tensor(owns)

    def _loss(self, batch) -> torch.Tensor:
        if getattr(self, "_cap", None) is not None:
            keys = batch["image"][:, None] * self._n_caps + self._cap[batch["index"]][None, :]
            batch["has_caption"] = torch.isin(keys, self._owns)
        return self._batch_loss(batch)

    def _batch_loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def _score_validation(self, res: dict, vds) -> float:
        """Early-stopping score: mean class mAP of both directions on labelled data, plus mean
        Recall@1/5/10 (as a fraction) when images have several captions (instance retrieval
        matters there); mean Recall@K alone on unlabelled data."""
        if vds.labels is None:
            return res["mR"]
        score = 0.5 * (res["i2t"]["map"] + res["t2i"]["map"])
        if "mR" in res and vds.texts_per_image.max() > 1:
            score += res["mR"] / 100.0
        return score
