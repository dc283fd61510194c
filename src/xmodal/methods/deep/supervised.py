"""Supervised deep common spaces: ACMR (Wang et al. 2017) and DSCMR (Zhen et al. 2019)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .. import register
from .._torch import mlp
from ..base import interval
from ._common import NONNEG, DeepMethod, Standardize, dims, info_nce, l2n, pair_mask


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return -ctx.lam * g, None


def grad_reverse(x: torch.Tensor, lam: float) -> torch.Tensor:
    """Identity forward, gradient times -lam backward (Ganin & Lempitsky 2015): one optimiser
    step then plays both sides of the minimax game."""
    return _GradReverse.apply(x, lam)


def _ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # multi-label safe: soft targets = the row's labels, normalised
    t = labels / labels.sum(1, keepdim=True).clamp(min=1)
    return -(t * F.log_softmax(logits, dim=1)).sum(1).mean()


class _SupervisedModule(nn.Module):
    def __init__(self, image_dim, text_dim, hidden, dim, n_labels, dropout, shared_last: bool):
        super().__init__()
        self.image_norm, self.text_norm = Standardize(image_dim), Standardize(text_dim)
        if shared_last:  # DSCMR: modality-specific layers, then one shared linear layer
            h = dims(0, hidden, dim)[1:-1] or [dim]
            self.image = mlp([image_dim, *h], dropout=dropout, final_activation=True)
            self.text = mlp([text_dim, *h], dropout=dropout, final_activation=True)
            self.shared = nn.Linear(h[-1], dim)
        else:
            self.image = mlp(dims(image_dim, hidden, dim), dropout=dropout)
            self.text = mlp(dims(text_dim, hidden, dim), dropout=dropout)
            self.shared = nn.Identity()
        self.classifier = nn.Linear(dim, max(n_labels, 1))
        self.label_space = 0.0  # weight of the predicted-label part of the embedding
        self.softmax = not shared_last  # ACMR: softmax classifier; DSCMR: linear regression

    def image_code(self, x):
        return self.shared(self.image(self.image_norm(x)))

    def text_code(self, y):
        return self.shared(self.text(self.text_norm(y)))

    def _embed(self, code):
        z = l2n(code)
        if self.label_space <= 0:
            return z
        pred = self.classifier(code)
        pred = F.softmax(pred, dim=1) if self.softmax else pred.clamp(min=0) + 1e-6
        # cosine of [z, sqrt(w) p] pairs = (z.z' + w p.p') / (1 + w): common space + label space
        w = self.label_space
        return torch.cat([z, w ** 0.5 * l2n(pred)], dim=1) / (1 + w) ** 0.5

    def encode_image(self, x):
        return self._embed(self.image_code(x))

    def encode_text(self, y):
        return self._embed(self.text_code(y))


class _SupervisedBase(DeepMethod):
    supervised = True

    def _build(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        m = self._make(image_dim, text_dim, n_labels)
        m.label_space = float(self.label_space)
        return m

    def _setup(self, X, Y, L) -> None:
        super()._setup(X, Y, L)

    def _instance(self, u, v, batch) -> torch.Tensor:
        """Optional instance-level InfoNCE term (``instance_weight``) for caption data."""
        if not self.instance_weight:
            return u.new_zeros(())
        return self.instance_weight * info_nce(l2n(u) @ l2n(v).T / self.temperature, pair_mask(batch))


@register("acmr")
class ACMR(_SupervisedBase):
    """Adversarial cross-modal retrieval (Wang, Yang, Xu, Hanjalic & Shen, "Adversarial
    Cross-Modal Retrieval", ACM MM 2017). A feature projector (one MLP per modality) plays
    against a modality classifier (3-layer MLP) that tells image from text codes; the projector
    minimises the embedding loss L_emb = ``alpha`` * L_imi + ``beta`` * L_imd minus
    ``adv_weight`` * L_adv (implemented with a gradient-reversal layer), where L_imd is label
    prediction from the common space (both modalities), L_imi the inter-modal triplet
    constraints with label-defined positives and negatives (hardest in the batch, margin
    ``margin``, on L2-normalised codes), and L_reg the weight decay.
    ``instance_weight`` > 0 adds an instance-level InfoNCE term for caption datasets (0 =
    the paper's loss). ``label_space`` > 0 appends the predicted label distribution to the
    embedding, so that cosine = (common-space cosine + w * label-space cosine) / (1 + w).
    The loss weights are tuned here (``alpha = beta = 1``, constant ``adv_weight``); the
    authors' code weights the label loss 100 times the triplet loss and ramps the reversal
    weight up as 2 / (1 + exp(-10 p)) - 1 over training progress p.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "alpha": NONNEG, "beta": NONNEG, "adv_weight": NONNEG, "margin": interval(0, 2),
        "instance_weight": NONNEG, "temperature": interval(1e-3, 1), "label_space": NONNEG}

    def __init__(self, dim: int = 256, hidden: Any = (1024,), alpha: float = 1.0, beta: float = 1.0,
                 adv_weight: float = 0.1, margin: float = 0.3, instance_weight: float = 1.0,
                 temperature: float = 0.05, label_space: float = 0.5, dropout: float = 0.1, epochs: int = 60,
                 batch_size: int = 256, lr: float = 5e-4, weight_decay: float = 1e-4,
                 patience: int | None = 10, val_fraction: float = 0.1, random_state: int = 0,
                 verbose: bool = True, lr_schedule: str = "cosine", grad_clip: float | None = None):
        self.dim, self.hidden, self.alpha, self.beta = dim, hidden, alpha, beta
        self.adv_weight, self.margin, self.instance_weight = adv_weight, margin, instance_weight
        self.temperature, self.dropout, self.label_space = temperature, dropout, label_space
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.lr_schedule, self.grad_clip = lr_schedule, grad_clip

    def _make(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        m = _SupervisedModule(image_dim, text_dim, self.hidden, self.dim, n_labels, self.dropout, False)
        m.discriminator = mlp([self.dim, self.dim // 2, self.dim // 4, 2])
        return m

    def _batch_loss(self, batch) -> torch.Tensor:
        m = self.module_
        u, v = m.image_code(batch["x"]), m.text_code(batch["y"])
        L = batch["labels"]
        l_imd = _ce(m.classifier(u), L) + _ce(m.classifier(v), L)
        un, vn = l2n(u), l2n(v)
        S = un @ vn.T
        same = pair_mask(batch, "label")
        # inter-modal triplets: hardest positive vs hardest negative, both anchor modalities
        big = 4.0
        hp_i = (S + big * (~same)).min(1).values
        hn_i = (S - big * same).max(1).values
        hp_t = (S + big * (~same)).min(0).values
        hn_t = (S - big * same).max(0).values
        l_imi = (self.margin - hp_i + hn_i).clamp(min=0).mean() + (self.margin - hp_t + hn_t).clamp(min=0).mean()
        codes = torch.cat([un, vn])
        modality = torch.cat([u.new_zeros(len(u)), u.new_ones(len(v))]).long()
        l_adv = F.cross_entropy(m.discriminator(grad_reverse(codes, self.adv_weight)), modality)
        return self.alpha * l_imi + self.beta * l_imd + l_adv + self._instance(u, v, batch)


@register("dscmr")
class DSCMR(_SupervisedBase):
    """Deep supervised cross-modal retrieval (Zhen, Hu, Wang & Peng, "Deep Supervised
    Cross-modal Retrieval", CVPR 2019). Modality-specific MLPs end in one shared linear layer
    (the common space) followed by a shared linear classifier P. The loss is
    J1 + ``alpha`` J2 + ``beta`` J3: J1 = ||P'U - Y|| + ||P'V - Y|| (discrimination in the
    label space), J2 = sum over image-image, image-text and text-text pairs of
    log(1 + e^G) - S G with G = cos/2 and S = 1 for pairs sharing a label, as the paper
    defines it (the authors' code uses the number of shared labels, the same on single-label
    data; discrimination in the common space), J3 = ||U - V|| (modality invariance). ``instance_weight`` > 0 adds an
    instance-level InfoNCE term for caption datasets (0 = the paper's loss). ``label_space`` > 0
    appends the predicted label vector P'u (DSCMR's label space) to the embedding, so that
    cosine = (common-space cosine + w * label-space cosine) / (1 + w).
    ``alpha = 1`` is tuned here; the authors' code uses ``alpha = 1e-3, beta = 0.1``.
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "alpha": NONNEG, "beta": NONNEG, "instance_weight": NONNEG, "temperature": interval(1e-3, 1),
        "label_space": NONNEG}

    def __init__(self, dim: int = 256, hidden: Any = (1024,), alpha: float = 1.0, beta: float = 0.1,
                 instance_weight: float = 1.0, temperature: float = 0.05, label_space: float = 0.5,
                 dropout: float = 0.1,
                 epochs: int = 60, batch_size: int = 256, lr: float = 5e-4, weight_decay: float = 1e-4,
                 patience: int | None = 10, val_fraction: float = 0.1, random_state: int = 0,
                 verbose: bool = True, lr_schedule: str = "cosine", grad_clip: float | None = None):
        self.dim, self.hidden, self.alpha, self.beta = dim, hidden, alpha, beta
        self.instance_weight, self.temperature, self.dropout = instance_weight, temperature, dropout
        self.label_space = label_space
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.lr_schedule, self.grad_clip = lr_schedule, grad_clip

    def _make(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        return _SupervisedModule(image_dim, text_dim, self.hidden, self.dim, n_labels, self.dropout, True)

    def _batch_loss(self, batch) -> torch.Tensor:
        m = self.module_
        u, v = m.image_code(batch["x"]), m.text_code(batch["y"])
        L = batch["labels"].float()
        j1 = (m.classifier(u) - L).norm(dim=1).mean() + (m.classifier(v) - L).norm(dim=1).mean()
        un, vn = l2n(u), l2n(v)
        S = ((L @ L.T) > 0).float()

        def disc(a, b):
            G = 0.5 * (a @ b.T)
            return (F.softplus(G) - S * G).mean()

        j2 = disc(un, un) + disc(un, vn) + disc(vn, vn)
        j3 = (u - v).norm(dim=1).mean()
        return j1 + self.alpha * j2 + self.beta * j3 + self._instance(u, v, batch)
