"""Learning-to-rank common spaces: VSE++ (hardest-negative triplets, frozen features or a GRU
text encoder), CLIP/LiT-style contrastive heads, and universal weighting metric learning."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ...data.dataset import DataError
from .. import register
from .._torch import mlp
from ..base import interval, one_of
from ._common import (NONNEG, POS_INT, DeepMethod, Standardize, Towers, dims, hardest_triplet,
                      info_nce, l2n, pair_mask, poly_loss)
from ._raw import build_vocab, is_text_list, to_ids

_COMMON = ("epochs", "batch_size", "lr", "weight_decay", "patience", "val_fraction",
           "random_state", "verbose")


def _rank_loss(kind: str, S: torch.Tensor, pos: torch.Tensor, margin: float) -> torch.Tensor:
    if kind == "hardest":
        return hardest_triplet(S, pos, margin, hardest=True)
    if kind == "sum":
        return hardest_triplet(S, pos, margin, hardest=False)
    return poly_loss(S, pos, margin)


class _GRUText(nn.Module):
    """Word embeddings + one GRU layer; the last hidden state is the caption (VSE++)."""

    def __init__(self, vocab_size: int, word_dim: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_dim, padding_idx=0)
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        self.gru = nn.GRU(word_dim, dim, batch_first=True)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.embed(ids), lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        _, h = self.gru(packed)
        return h[-1]


class _VSEModule(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, dim: int, hidden: Any, text_model: str,
                 vocab_size: int, word_dim: int, dropout: float = 0.0):
        super().__init__()
        self.image_norm = Standardize(image_dim)
        self.image = mlp(dims(image_dim, hidden, dim), dropout=dropout)
        self.text_model = text_model
        if text_model == "gru":
            self.rnn = _GRUText(vocab_size, word_dim, dim)
        else:
            self.text_norm = Standardize(text_dim)
            self.text = mlp(dims(text_dim, hidden, dim), dropout=dropout)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(self.image(self.image_norm(x)))

    def encode_text(self, y: torch.Tensor) -> torch.Tensor:
        return l2n(self.text(self.text_norm(y)))

    def encode_tokens(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return l2n(self.rnn(ids, lengths))


@register("vsepp")
class VSEPP(DeepMethod):
    """VSE++ (Faghri, Fleet, Kiros & Fidler, "VSE++: Improving Visual-Semantic Embeddings with
    Hard Negatives", BMVC 2018): linear (or MLP) image projection and a text encoder into a
    joint L2-normalised space, trained with the max-of-hinges triplet loss on the hardest
    negative of each query in the mini-batch, both directions, margin 0.2.

    ``text_model="features"`` projects frozen sentence features (e.g. MiniLM);
    ``text_model="gru"`` trains a word-embedding + GRU encoder from scratch on the training
    captions, the RNN family of the survey; its vocabulary holds the training words seen at least
    ``min_word_count`` times (the authors' threshold of 4), the rarer ones becoming ``<unk>`` so
    that the unknown-word embedding is trained for words the test captions bring; that variant reads raw
    texts: ``encode_texts`` takes a list of strings (or use ``encode_raw_texts``); its cost grows
    with ``dim`` squared, so on a CPU use e.g. ``dim=256, lr=1e-3, epochs=15``.
    ``loss="sum"`` is the sum-of-hinges VSE0 baseline, ``loss="uwml"`` the universal weighting
    polynomial loss (Wei et al. 2020). Captions of the same image are never negatives.
    ``dropout`` acts after the hidden layers of the MLP towers (none with ``hidden=None``).

    Deviations from the paper's training: ``warmup_epochs`` of sum-of-hinges come before the
    hardest negative (0 = max of hinges from the start); the loss is averaged over the batch
    (the authors' code sums it, which under Adam only changes what ``grad_clip`` means); a
    constant learning rate with early stopping replaces the step decay (x0.1 after 15 epochs).
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "margin": interval(0, 2), "text_model": one_of("features", "gru"),
        "loss": one_of("hardest", "sum", "uwml"), "word_dim": POS_INT,
        "warmup_epochs": interval(0, None, integer=True), "min_word_count": POS_INT}

    def __init__(self, dim: int = 1024, hidden: Any = None, margin: float = 0.2,
                 text_model: str = "features", loss: str = "hardest", word_dim: int = 300,
                 warmup_epochs: int = 2, dropout: float = 0.0, epochs: int = 40,
                 batch_size: int = 128, lr: float = 2e-4, weight_decay: float = 0.0,
                 patience: int | None = 8, val_fraction: float = 0.1, random_state: int = 0,
                 verbose: bool = True, lr_schedule: str = "constant", grad_clip: float | None = 2.0,
                 min_word_count: int = 4):
        self.dim, self.hidden, self.margin = dim, hidden, margin
        self.text_model, self.loss, self.word_dim = text_model, loss, word_dim
        self.warmup_epochs, self.dropout = warmup_epochs, dropout
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.lr_schedule, self.grad_clip = lr_schedule, grad_clip
        self.min_word_count = min_word_count

    @property
    def raw_inputs(self) -> tuple[str, ...]:
        return ("texts",) if self.text_model == "gru" else ()

    def _fit(self, X, Y, L, *, train, val) -> None:
        if self.text_model == "gru":
            if train.texts is None:
                raise DataError(f"vsepp(text_model='gru') needs raw captions: dataset {train.name!r} "
                                "has no field texts")
            self.vocab_ = build_vocab(train.texts, self.min_word_count)
        super()._fit(X, Y, L, train=train, val=val)

    def _build(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        vocab = len(getattr(self, "vocab_", [])) or 2
        return _VSEModule(image_dim, text_dim, self.dim, self.hidden, self.text_model, vocab, self.word_dim,
                          self.dropout)

    def _setup(self, X, Y, L) -> None:
        super()._setup(X, Y, L)
        if self.text_model == "gru":
            texts = [self._train.texts[i] for i in self._rows]
            ids, lengths = to_ids(texts, self.vocab_)
            self._ids, self._lengths = self._tensor(ids), self._tensor(lengths)
        self._epoch = 0

    def _on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def _text_batch(self, batch) -> torch.Tensor:
        if self.text_model == "gru":
            idx = batch["index"]
            lengths = self._lengths[idx]
            ids = self._ids[idx][:, :int(lengths.max())]
            return self.module_.encode_tokens(ids, lengths)
        return self.module_.encode_text(batch["y"])

    def _batch_loss(self, batch) -> torch.Tensor:
        u = self.module_.encode_image(batch["x"])
        v = self._text_batch(batch)
        # VSE++ starts with all negatives (sum) before switching to the hardest one: hardest
        # negatives from random initialisation collapse the space.
        kind = "sum" if (self.loss == "hardest" and self._epoch < self.warmup_epochs) else self.loss
        return _rank_loss(kind, u @ v.T, pair_mask(batch), self.margin)

    # -------------------------------------------------------------- raw texts
    def encode_raw_texts(self, texts: Sequence[str], features: np.ndarray | None = None) -> np.ndarray:
        """Embed caption strings (GRU variant) or, for the feature variant, ``features``."""
        self._check_fitted()
        if self.text_model != "gru":
            if features is None:
                raise DataError("vsepp(text_model='features') embeds text features, not strings")
            return self.encode_texts(features)
        ids, lengths = to_ids(list(texts), self.vocab_)
        out = []
        self.module_.eval()
        with torch.inference_mode():
            for s in range(0, len(ids), 1024):
                l = self._tensor(lengths[s:s + 1024])
                z = self.module_.encode_tokens(self._tensor(ids[s:s + 1024, :int(l.max())]), l)
                out.append(z.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, Y: Any) -> np.ndarray:
        if self.text_model == "gru":
            if is_text_list(Y):
                return self.encode_raw_texts(list(Y))
            raise DataError("vsepp(text_model='gru') encodes caption strings: pass a list of texts "
                            "(or evaluate through xmodal.methods.deep.raw_view(method, dataset))")
        return super().encode_texts(Y)

    def _validation_result(self, vds) -> dict:
        from ...evaluation.protocol import evaluate
        from ._raw import raw_view

        return evaluate(raw_view(self, vds), vds, pk=(), rk=(1, 5, 10))


class _ContrastiveModule(Towers):
    def __init__(self, image_dims, text_dims, dropout, init_temperature):
        super().__init__(image_dims, text_dims, dropout=dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))


@register("contrastive")
class Contrastive(DeepMethod):
    """Contrastive projection heads on frozen towers, CLIP/LiT style (Radford et al., "Learning
    Transferable Visual Models From Natural Language Supervision", ICML 2021; Zhai et al., "LiT:
    Zero-Shot Transfer with Locked-image text Tuning", CVPR 2022): an MLP head per modality,
    L2-normalised outputs, symmetric InfoNCE over the batch with a learned temperature
    (logit scale clamped at 100 as in CLIP). Several captions of one image are all positives.

    ``positives="label"`` additionally counts image-text pairs sharing a class as positives
    (supervised contrastive, Khosla et al. 2020), weighted by ``label_weight`` against the
    instance-level loss; it needs labels, and an unlabelled item (an all-zero label row) takes
    no part in that term. ``loss="uwml"`` swaps InfoNCE for the universal weighting polynomial
    loss (Wei et al. 2020).
    """

    _parameter_rules: ClassVar[dict[str, Any]] = {
        "temperature": interval(1e-3, 1), "positives": one_of("image", "label"),
        "label_weight": NONNEG, "loss": one_of("infonce", "uwml"), "margin": interval(0, 2)}

    def __init__(self, dim: int = 512, hidden: Any = 1024, temperature: float = 0.07,
                 positives: str = "image", label_weight: float = 0.5, loss: str = "infonce",
                 margin: float = 0.2, dropout: float = 0.1, epochs: int = 60, batch_size: int = 256,
                 lr: float = 5e-4, weight_decay: float = 1e-4, patience: int | None = 10,
                 val_fraction: float = 0.1, random_state: int = 0, verbose: bool = True,
                 lr_schedule: str = "cosine", grad_clip: float | None = None):
        self.dim, self.hidden, self.temperature = dim, hidden, temperature
        self.positives, self.label_weight, self.loss, self.margin = positives, label_weight, loss, margin
        self.dropout = dropout
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.lr_schedule, self.grad_clip = lr_schedule, grad_clip

    def _fit(self, X, Y, L, *, train, val) -> None:
        if self.positives == "label" and L is None:
            raise DataError(f"contrastive(positives='label') counts pairs sharing a class as positives, "
                            f"but dataset {train.name!r} has no field labels")
        super()._fit(X, Y, L, train=train, val=val)

    def _build(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        return _ContrastiveModule(dims(image_dim, self.hidden, self.dim), dims(text_dim, self.hidden, self.dim),
                                  self.dropout, self.temperature)

    def _setup(self, X, Y, L) -> None:
        super()._setup(X, Y, L)

    def _batch_loss(self, batch) -> torch.Tensor:
        u = self.module_.encode_image(batch["x"])
        v = self.module_.encode_text(batch["y"])
        S = u @ v.T
        pos = pair_mask(batch)
        if self.loss == "uwml":
            loss = poly_loss(S, pos, self.margin)
        else:
            scale = self.module_.logit_scale.clamp(max=math.log(100.0)).exp()
            loss = info_nce(scale * S, pos)
        if self.positives == "label" and batch["labels"] is not None:
            scale = self.module_.logit_scale.clamp(max=math.log(100.0)).exp()
            loss = loss + self.label_weight * info_nce(scale * S, pair_mask(batch, "label"))
        return loss


@register("uwml")
class UWML(VSEPP):
    """Universal weighting metric learning (Wei, Xu, Yang, Ji, Wang & Shen, "Universal Weighting
    Metric Learning for Cross-Modal Matching", CVPR 2020) on the VSE++ architecture: the
    polynomial pair-weighting loss replaces the hardest-negative hinge. Same as
    ``vsepp(loss="uwml")``; ``text_model="gru"`` trains a GRU text encoder."""

    def __init__(self, dim: int = 1024, hidden: Any = None, margin: float = 0.2,
                 text_model: str = "features", loss: str = "uwml", word_dim: int = 300,
                 warmup_epochs: int = 0, dropout: float = 0.0, epochs: int = 40,
                 batch_size: int = 128, lr: float = 2e-4, weight_decay: float = 0.0,
                 patience: int | None = 8, val_fraction: float = 0.1, random_state: int = 0,
                 verbose: bool = True, lr_schedule: str = "constant", grad_clip: float | None = 2.0,
                 min_word_count: int = 4):
        super().__init__(dim, hidden, margin, text_model, loss, word_dim, warmup_epochs, dropout,
                         epochs, batch_size, lr, weight_decay, patience, val_fraction, random_state,
                         verbose, lr_schedule, grad_clip, min_word_count)
