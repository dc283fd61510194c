"""A TERAN-style region-word alignment transformer, used as a re-ranker of a global shortlist."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import nn

from ...data.dataset import DataError
from .. import register
from ..base import fit_caller_stacklevel, interval, one_of
from ._common import (NONNEG, POS_INT, DeepMethod, Standardize, dims, hardest_triplet, info_nce,
                      l2n, pair_mask)
from .._torch import mlp
from . import _features

N_REGIONS, REGION_DIM, TOKEN_DIM = 49, 1280, 384
IMAGE_FULL, TEXT_FULL = 1.0, 2.0  # first column of a full (region/word) embedding


class _TERANModule(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, dim: int, global_dim: int, hidden: Any,
                 layers: int, heads: int, dropout: float, temperature: float):
        super().__init__()
        # global (first-stage) heads on the pooled features
        self.image_norm, self.text_norm = Standardize(image_dim), Standardize(text_dim)
        self.g_image = mlp(dims(image_dim, hidden, global_dim), dropout=dropout)
        self.g_text = mlp(dims(text_dim, hidden, global_dim), dropout=dropout)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        # fine-grained (second-stage) encoders on regions and word pieces
        self.region_in = nn.Sequential(nn.LayerNorm(REGION_DIM), nn.Linear(REGION_DIM, dim))
        self.region_pos = nn.Parameter(torch.zeros(N_REGIONS, dim))
        self.word_in = nn.Sequential(nn.LayerNorm(TOKEN_DIM), nn.Linear(TOKEN_DIM, dim))
        self.word_pos = nn.Parameter(torch.zeros(_features.MAX_TOKENS, dim))
        nn.init.normal_(self.region_pos, std=0.02)
        nn.init.normal_(self.word_pos, std=0.02)

        def encoder():
            layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True,
                                               norm_first=True)
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        self.region_enc, self.word_enc = encoder(), encoder()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return l2n(self.g_image(self.image_norm(x)))

    def encode_text(self, y: torch.Tensor) -> torch.Tensor:
        return l2n(self.g_text(self.text_norm(y)))

    def regions(self, R: torch.Tensor) -> torch.Tensor:
        return l2n(self.region_enc(self.region_in(R) + self.region_pos))

    def words(self, W: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        T = W.shape[1]
        pad = torch.arange(T, device=W.device)[None, :] >= lengths[:, None]
        out = self.word_enc(self.word_in(W) + self.word_pos[:T], src_key_padding_mask=pad)
        return l2n(out).masked_fill(pad[..., None], 0.0)


def alignment(Rq: torch.Tensor, Wd: torch.Tensor, lengths: torch.Tensor,
              pooling: str = "sum") -> torch.Tensor:
    """TERAN's global score from the region-word alignment matrix (Messina et al. 2020):
    for every word the best-matching region (max over regions), then summed over the caption's
    words ("MrSw", TERAN's max-sum pooling; ``pooling="mean"`` averages them instead, TERAN's
    "MrAVGw"). As in TERAN, the [CLS] and [SEP] word pieces (first and last of each caption)
    take no part. Rq: (n, R, d) regions, Wd: (m, T, d) words -> (n, m) scores."""
    A = torch.einsum("ird,jtd->ijtr", Rq, Wd).max(dim=3).values  # (n, m, T)
    t = torch.arange(Wd.shape[1], device=Wd.device)[None, :]
    mask = ((t >= 1) & (t < lengths[:, None] - 1)).float()  # (m, T): the words proper
    out = (A * mask[None]).sum(2)
    if pooling == "mean":
        out = out / mask.sum(1).clamp(min=1)[None]
    return out


@register("transformer")
class TERAN(DeepMethod):
    """Transformer encoder reasoning and alignment network, after TERAN (Messina, Amato, Esuli,
    Falchi, Gennaro & Marchand-Maillet, "Fine-grained Visual Textual Alignment for Cross-Modal
    Retrieval using Transformer Encoders", ACM TOMM 2021; ICPR 2020).

    Regions are the 7x7 cells of EfficientNet-Lite0's last feature map, words the MiniLM
    token outputs (see :mod:`._features`); a small transformer encoder per modality
    (``layers`` layers, ``heads`` heads, width ``dim``; TERAN stacks more, bigger layers on
    Faster R-CNN regions and BERT) contextualises them; the image-caption score pools the
    region-word cosine alignment matrix (max over regions per word, summed over the words:
    TERAN's max-sum "MrSw"; ``pooling="mean"`` averages over words) and is trained with the
    hardest-negative triplet loss (margin ``margin``), as in TERAN, on the first
    ``align_batch`` pairs of each mini-batch (its cost is quadratic in the batch). Full
    alignment scoring of every pair is slow, so retrieval is two-stage: global embeddings (MLP
    heads on the pooled features, trained jointly with symmetric InfoNCE, plus ``label_weight``
    times InfoNCE over pairs sharing a class when the data has labels, where an unlabelled item
    takes no part) rank everything, and
    the top ``shortlist`` items of each query are re-ranked by global + ``rerank_weight`` *
    alignment (``score(Q, D)``; TERAN ranks by the alignment alone). A sum over words grows
    with the caption, so the alignment gets a small weight: ``rerank_weight=0.2`` was chosen on
    the UCM-Captions val split (val mR 50.5 at 0.05-0.2, 48.3 at 1.0, 49.0 without re-ranking).

    The fine-grained stage needs raw inputs: ``raw_inputs = ("images", "texts")``, so evaluate
    through :func:`xmodal.methods.deep.raw_view` (or call ``encode_raw_images(paths)`` /
    ``encode_raw_texts(texts)``). Given only pooled features — or a dataset whose image files
    are absent (Wikipedia) — the method uses its global stage alone (``mode_ == "global"``).
    """

    supervised = False
    uses_labels = True  # the label_weight term, whenever the data has labels
    _parameter_rules: ClassVar[dict[str, Any]] = {
        "global_dim": POS_INT, "layers": POS_INT, "heads": POS_INT, "margin": interval(0, 2),
        "temperature": interval(1e-3, 1), "shortlist": POS_INT, "rerank_weight": NONNEG,
        "align_weight": NONNEG, "label_weight": NONNEG, "align_batch": interval(2, None, integer=True),
        "pooling": one_of("sum", "mean")}

    def __init__(self, dim: int = 128, global_dim: int = 512, hidden: Any = 1024, layers: int = 1,
                 heads: int = 4, margin: float = 0.2, temperature: float = 0.07,
                 label_weight: float = 0.5, align_weight: float = 1.0, align_batch: int = 32,
                 shortlist: int = 30,
                 rerank_weight: float = 0.2, dropout: float = 0.1, epochs: int = 20,
                 batch_size: int = 128, lr: float = 5e-4, weight_decay: float = 1e-4,
                 patience: int | None = 5, val_fraction: float = 0.1, random_state: int = 0,
                 verbose: bool = True, lr_schedule: str = "cosine", grad_clip: float | None = 2.0,
                 pooling: str = "sum"):
        self.dim, self.global_dim, self.hidden, self.layers, self.heads = dim, global_dim, hidden, layers, heads
        self.pooling = pooling
        self.margin, self.temperature, self.label_weight = margin, temperature, label_weight
        self.align_weight, self.shortlist, self.rerank_weight = align_weight, shortlist, rerank_weight
        self.align_batch = align_batch
        self.dropout = dropout
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.lr_schedule, self.grad_clip = lr_schedule, grad_clip

    @property
    def raw_inputs(self) -> tuple[str, ...]:
        return ("images", "texts") if getattr(self, "mode_", "regions") == "regions" else ()

    # -------------------------------------------------------------- training
    def _fit(self, X, Y, L, *, train, val) -> None:
        have_images = train.image_paths is not None and all(os.path.exists(p) for p in train.image_paths)
        self.mode_ = "regions" if (have_images and train.texts is not None) else "global"
        if self.mode_ == "global":
            warnings.warn(f"transformer: dataset {train.name!r} has no image files or texts; "
                          "training the global stage only", stacklevel=fit_caller_stacklevel())
        super()._fit(X, Y, L, train=train, val=val)

    def _build(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        return _TERANModule(image_dim, text_dim, self.dim, self.global_dim, self.hidden, self.layers,
                            self.heads, self.dropout, self.temperature)

    def _setup(self, X, Y, L) -> None:
        super()._setup(X, Y, L)
        if self.mode_ == "regions":
            self._regions = self._tensor(_features.image_regions(self._train.image_paths))
            texts = [self._train.texts[i] for i in self._rows]
            tok, lengths = _features.text_tokens(texts)
            self._tokens, self._lengths = self._tensor(tok), self._tensor(lengths)

    def _batch_loss(self, batch) -> torch.Tensor:
        m = self.module_
        u, v = m.encode_image(batch["x"]), m.encode_text(batch["y"])
        scale = m.logit_scale.clamp(max=math.log(100.0)).exp()
        S = u @ v.T
        loss = info_nce(scale * S, pair_mask(batch))
        if batch["labels"] is not None and self.label_weight > 0:
            loss = loss + self.label_weight * info_nce(scale * S, pair_mask(batch, "label"))
        if self.mode_ == "regions" and self.align_weight > 0:
            # the alignment matrix costs B^2 R T d: train it on the batch's first align_batch rows
            sub = slice(0, self.align_batch)
            idx = batch["index"][sub]
            lengths = self._lengths[idx]
            T = int(lengths.max())
            R = m.regions(self._regions[batch["image"][sub]].float())
            W = m.words(self._tokens[idx, :T].float(), lengths)
            A = alignment(R, W, lengths, self.pooling)
            pos = pair_mask(batch)[sub, sub]
            loss = loss + self.align_weight * hardest_triplet(A, pos, self.margin)
        return loss

    def _validation_result(self, vds) -> dict:
        from ...evaluation.protocol import evaluate
        from ._raw import raw_view

        return evaluate(raw_view(self, vds), vds, pk=(), rk=(1, 5, 10))

    # -------------------------------------------------------------- raw encoding
    @torch.inference_mode()
    def encode_raw_images(self, paths: Sequence[str], features: np.ndarray | None = None) -> np.ndarray:
        """[flag | global | regions] rows for image files (pooled features are the regions' mean
        unless ``features`` gives them)."""
        self._check_fitted()
        R = _features.image_regions(list(paths))
        X = R.astype(np.float32).mean(1) if features is None else features
        g = self.encode_images(X)
        if self.mode_ != "regions":
            return g
        self.module_.eval()
        out = [self.module_.regions(self._tensor(R[s:s + 256].astype(np.float32))).flatten(1).cpu().numpy()
               for s in range(0, len(R), 256)]
        flag = np.full((len(g), 1), IMAGE_FULL, np.float32)
        return np.concatenate([flag, g, np.concatenate(out)], axis=1)

    @torch.inference_mode()
    def encode_raw_texts(self, texts: Sequence[str], features: np.ndarray | None = None) -> np.ndarray:
        """[flag | global | length | words] rows for caption strings (``features`` = their sentence
        embeddings; computed with MiniLM when absent)."""
        self._check_fitted()
        texts = list(texts)
        Y = _features.sentence_embeddings(texts) if features is None else features
        g = self.encode_texts(Y)
        if self.mode_ != "regions":
            return g
        tok, lengths = _features.text_tokens(texts)
        self.module_.eval()
        out = []
        for s in range(0, len(tok), 512):
            lt = self._tensor(lengths[s:s + 512])
            out.append(self.module_.words(self._tensor(tok[s:s + 512].astype(np.float32)), lt)
                       .flatten(1).cpu().numpy())
        flag = np.full((len(g), 1), TEXT_FULL, np.float32)
        return np.concatenate([flag, g, lengths[:, None].astype(np.float32), np.concatenate(out)], axis=1)

    def _split(self, Z: np.ndarray):
        gd = self.global_dim
        if Z.shape[1] == gd:
            return "global", Z, None, None
        if Z[0, 0] == IMAGE_FULL:
            return "image", Z[:, 1:1 + gd], Z[:, 1 + gd:].reshape(len(Z), N_REGIONS, self.dim), None
        lengths = Z[:, 1 + gd].astype(np.int64)
        return "text", Z[:, 1:1 + gd], Z[:, 2 + gd:].reshape(len(Z), -1, self.dim), lengths

    @torch.inference_mode()
    def score(self, Q: np.ndarray, D: np.ndarray) -> np.ndarray:
        """Global cosine for every pair; the top ``shortlist`` of each query re-ranked by
        global + ``rerank_weight`` * region-word alignment (full embeddings only)."""
        kq, gq, fq, lq = self._split(np.asarray(Q, np.float32))
        kd, gd_, fd, ld = self._split(np.asarray(D, np.float32))
        G = gq @ gd_.T
        if "global" in (kq, kd) or self.rerank_weight == 0:
            return G
        if kq == kd:
            raise DataError("transformer.score: queries and database are the same modality")
        k = min(self.shortlist, G.shape[1])
        top = np.argpartition(-G, k - 1, axis=1)[:, :k]
        fq_t, fd_t = self._tensor(fq), self._tensor(fd)
        out = np.empty_like(G)
        for r in range(len(G)):
            cand = top[r]
            if kq == "image":
                a = alignment(fq_t[r:r + 1], fd_t[cand], self._tensor(ld[cand]), self.pooling)[0]
            else:
                a = alignment(fd_t[cand], fq_t[r:r + 1], self._tensor(lq[r:r + 1]), self.pooling)[:, 0]
            short = G[r, cand] + self.rerank_weight * a.cpu().numpy()
            # the rest keeps its global order, strictly below the lowest shortlisted score
            # (summed alignments are unbounded: no fixed offset would do)
            out[r] = G[r] - G[r].max() + short.min() - 1.0
            out[r, cand] = short
        return out
