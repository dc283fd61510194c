"""Graph-regularised deep common space over a joint image/text graph."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import register
from ..base import interval
from ._common import NONNEG, POS_INT, DeepMethod, Towers, dims, pair_mask


def knn_edges(Z: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """Edges of the symmetrised k-nearest-neighbour graph (cosine, no self loops) as sorted
    int64 keys ``i * n + j``, both directions: O(n k) memory, where an n x n matrix of the
    captions of COCO would not fit."""
    Zn = Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    n = len(Zn)
    k = min(k, n - 1)
    if k <= 0:
        return np.zeros(0, np.int64)
    keys = []
    for s in range(0, n, chunk):
        S = Zn[s:s + chunk] @ Zn.T
        S[np.arange(len(S)), np.arange(s, s + len(S))] = -np.inf
        nn_idx = np.argpartition(-S, k, axis=1)[:, :k].astype(np.int64)
        rows = np.repeat(np.arange(s, s + len(S), dtype=np.int64), k)
        cols = nn_idx.ravel()
        keys += [rows * n + cols, cols * n + rows]
    return np.unique(np.concatenate(keys))


def adjacent(edges: torch.Tensor, n: int, nodes: torch.Tensor) -> torch.Tensor:
    """B x B bool: is there an edge between ``nodes[a]`` and ``nodes[b]`` (``edges`` from
    :func:`knn_edges` over ``n`` nodes)."""
    return torch.isin(nodes[:, None] * n + nodes[None, :], edges)


class _GraphModule(Towers):
    def __init__(self, image_dims, text_dims, dropout, n_labels, temperature):
        super().__init__(image_dims, text_dims, dropout=dropout)
        self.classifier = nn.Linear(image_dims[-1], max(n_labels, 1))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))


@register("graph")
class GraphReg(DeepMethod):
    """Joint graph-regularised common space, a deep version of joint graph regularisation
    (Zhai, Peng & Xiao, "Heterogeneous Metric Learning with Joint Graph Regularization for
    Cross-Media Retrieval", AAAI 2013; "Learning Cross-Media Joint Representation with Sparse
    and Semi-supervised Regularization", IEEE TCSVT 2014).

    All training images and texts are nodes of one graph with edges of three kinds: an image
    and its captions (weight 1), the ``k`` nearest neighbours within each modality in the
    input feature space (weight ``knn_weight``) and, when labels exist, items sharing a label
    across and within modalities (weight ``label_weight``). Two MLP towers are trained so that
    the embedding is smooth on that graph: for every node in a mini-batch, a softmax over the
    batch's other nodes (both modalities) must put its mass on the node's graph neighbours in
    proportion to the edge weights (the normalised-Laplacian smoothness term, with the
    softmax's normaliser as the repulsion that rules out the collapsed solution), plus a label
    classifier on the codes (weight ``cls_weight``) when labels exist.
    """

    #: the label edges and classifier are used whenever the data has labels (not required)
    uses_labels = True  # label_weight / cls_weight terms, whenever the data has labels
    _parameter_rules: ClassVar[dict[str, Any]] = {
        "k": POS_INT, "knn_weight": NONNEG, "label_weight": NONNEG, "cls_weight": NONNEG,
        "temperature": interval(1e-3, 1)}

    def __init__(self, dim: int = 512, hidden: Any = 1024, k: int = 5, knn_weight: float = 0.1,
                 label_weight: float = 0.2, cls_weight: float = 0.5, temperature: float = 0.05,
                 dropout: float = 0.1, epochs: int = 60, batch_size: int = 256, lr: float = 5e-4,
                 weight_decay: float = 1e-4, patience: int | None = 10, val_fraction: float = 0.1,
                 random_state: int = 0, verbose: bool = True, lr_schedule: str = "cosine",
                 grad_clip: float | None = None):
        self.dim, self.hidden, self.k = dim, hidden, k
        self.knn_weight, self.label_weight, self.cls_weight = knn_weight, label_weight, cls_weight
        self.temperature, self.dropout = temperature, dropout
        self.epochs, self.batch_size, self.lr, self.weight_decay = epochs, batch_size, lr, weight_decay
        self.patience, self.val_fraction, self.random_state, self.verbose = (
            patience, val_fraction, random_state, verbose)
        self.lr_schedule, self.grad_clip = lr_schedule, grad_clip

    def _build(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        return _GraphModule(dims(image_dim, self.hidden, self.dim), dims(text_dim, self.hidden, self.dim),
                            self.dropout, n_labels, self.temperature)

    def _setup(self, X, Y, L) -> None:
        super()._setup(X, Y, L)
        image = self._image.cpu().numpy()
        uniq, first = np.unique(image, return_index=True)
        # image kNN over distinct images; texts over all training captions
        pos = np.full(int(image.max()) + 1, -1)
        pos[uniq] = np.arange(len(uniq))
        self._img_node = self._tensor(pos[image])  # row -> distinct-image node
        self._n_img, self._n_txt = len(uniq), len(Y)
        self._img_knn = self._tensor(knn_edges(X[first], self.k))
        self._txt_knn = self._tensor(knn_edges(Y, self.k))

    def _batch_loss(self, batch) -> torch.Tensor:
        m = self.module_
        u, v = m.encode_image(batch["x"]), m.encode_text(batch["y"])
        idx, B = batch["index"], len(batch["index"])
        same_img = batch["image"][:, None] == batch["image"][None, :]
        inode = self._img_node[idx]
        W_ii = self.knn_weight * adjacent(self._img_knn, self._n_img, inode).float() + same_img.float()
        W_tt = self.knn_weight * adjacent(self._txt_knn, self._n_txt, idx).float() + same_img.float()
        W_it = pair_mask(batch).float()
        if batch["labels"] is not None and self.label_weight > 0:
            lab = ((batch["labels"] @ batch["labels"].T) > 0).float() * self.label_weight
            W_ii, W_tt, W_it = W_ii + lab, W_tt + lab, W_it + lab
        W = torch.cat([torch.cat([W_ii, W_it], 1), torch.cat([W_it.T, W_tt], 1)], 0)
        W.fill_diagonal_(0)
        Z = torch.cat([u, v])
        scale = m.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = (scale * Z @ Z.T).masked_fill(torch.eye(2 * B, dtype=torch.bool, device=Z.device), -1e9)
        tgt = W / W.sum(1, keepdim=True).clamp(min=1e-12)
        loss = -(tgt * F.log_softmax(logits, dim=1)).sum(1).mean()
        if batch["labels"] is not None and self.cls_weight > 0:
            t = batch["labels"] / batch["labels"].sum(1, keepdim=True).clamp(min=1)
            loss = loss + self.cls_weight * 0.5 * (
                -(t * F.log_softmax(m.classifier(u), 1)).sum(1).mean()
                - (t * F.log_softmax(m.classifier(v), 1)).sum(1).mean())
        return loss
