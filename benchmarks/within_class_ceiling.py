"""How much within-class order do frozen features hold? (docs/results.md, issue 5 analysis)

Trains xmodal methods ("generalists") and a *within-class specialist*: two MLP heads trained
with InfoNCE whose negatives are only the query's own class (each batch holds whole classes),
so all it learns is the order of images and captions inside a class. Prints, on val and test:

- each model's mR, and its *oracle* mR: every same-class pair gets a bonus larger than any
  score (perfect class separation), the model's own order inside the class;
- the specialist's scores fused with each generalist's (z-scored sum, several weights;
  choose the weight on val).

    XMODAL_THREADS=1 python benchmarks/within_class_ceiling.py --methods acmr,contrastive
    XMODAL_THREADS=1 python benchmarks/within_class_ceiling.py --methods cca --epochs 5 --weights 1   # a quick look

``--methods`` takes any xmodal method (a seed and ``verbose=False`` are passed to those that
take them); ``--epochs`` bounds the specialist's training (60 for the figures in docs/results.md).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xmodal import methods
from xmodal.data import load_dataset
from xmodal.encoders import encode_dataset
from xmodal.evaluation.protocol import similarity
from xmodal.metrics import recall_at_k


def mean_recall(S: np.ndarray, part) -> float:
    """mR (percent) of an image x text score matrix of one split."""
    pairs = part.text_to_image[None, :] == np.arange(part.n_images)[:, None]
    r = list(recall_at_k(S, pairs).values()) + list(recall_at_k(S.T, pairs.T).values())
    return 100 * float(np.mean(r))


def same_class(part) -> np.ndarray:
    L = part.labels.astype(float)
    return (L @ L[part.text_to_image].T) > 0


def zscore(S: np.ndarray) -> np.ndarray:
    return (S - S.mean()) / S.std()


class Heads(nn.Module):
    def __init__(self, image_dim: int, text_dim: int, dim: int = 512, hidden: int = 1024, dropout: float = 0.2):
        super().__init__()
        self.image = nn.Sequential(nn.Dropout(dropout), nn.Linear(image_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.text = nn.Sequential(nn.Dropout(dropout), nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    @torch.no_grad()
    def scores(self, part) -> np.ndarray:
        self.eval()
        zi = F.normalize(self.image(torch.as_tensor(part.image_features, dtype=torch.float32)), dim=1)
        zt = F.normalize(self.text(torch.as_tensor(part.text_features, dtype=torch.float32)), dim=1)
        return (zi @ zt.T).double().numpy()


def specialist(train, val, within: bool = True, epochs: int = 60, classes_per_batch: int = 3,
               seed: int = 0) -> Heads:
    """InfoNCE over batches of whole classes; ``within``: other classes are masked out of the
    softmax, so only same-class items are negatives. The epoch kept is the best oracle mR on val."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    X = torch.as_tensor(train.image_features, dtype=torch.float32)
    Y = torch.as_tensor(train.text_features, dtype=torch.float32)
    label = train.labels.argmax(1)
    captions = [np.flatnonzero(train.text_to_image == i) for i in range(train.n_images)]
    net = Heads(X.shape[1], Y.shape[1])
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    oracle_val = same_class(val) * 100.0
    best, best_state = -1.0, None
    for _ in range(epochs):
        net.train()
        order = rng.permutation(train.labels.shape[1])
        for b in range(0, len(order), classes_per_batch):
            imgs = np.flatnonzero(np.isin(label, order[b:b + classes_per_batch]))
            caps = [rng.choice(captions[i]) for i in imgs]
            zi = F.normalize(net.image(X[imgs]), dim=1)
            zt = F.normalize(net.text(Y[caps]), dim=1)
            logits = net.logit_scale.exp() * zi @ zt.T
            if within:
                other = torch.as_tensor(label[imgs][:, None] != label[imgs][None, :])
                logits = logits.masked_fill(other, -1e4)
            target = torch.arange(len(imgs))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                net.logit_scale.clamp_(0, float(np.log(100)))
        score = mean_recall(net.scores(val) + oracle_val, val)
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    return net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ucm_captions")
    ap.add_argument("--image-encoder", default="efficientnet-lite0:d4+mobilenet-v2:d4")
    ap.add_argument("--text-encoder", default="minilm")
    ap.add_argument("--methods", default="acmr,contrastive")
    ap.add_argument("--weights", default="0.25,0.5,1,2")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=60, help="specialist training epochs")
    args = ap.parse_args()
    # checked before the features are loaded: --epochs 0 kept no specialist at all
    if args.epochs < 1:
        ap.error(f"--epochs must be at least 1, got {args.epochs}")
    unknown = [m for m in args.methods.split(",") if m not in methods.available()]
    if unknown:
        ap.error(f"--methods: no such method {', '.join(map(repr, unknown))}")
    try:
        [float(w) for w in args.weights.split(",")]
    except ValueError:
        ap.error(f"--weights {args.weights!r}: comma-separated numbers")
    torch.set_num_threads(1)
    ds = encode_dataset(load_dataset(args.dataset), args.image_encoder, args.text_encoder, quiet=True)
    parts = {"val": ds.subset("val"), "test": ds.subset("test")}
    train = ds.subset("train")
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name in args.methods.split(","):
        # seed and quiet training where the method has them (closed-form methods take neither)
        extra = {k: v for k, v in (("random_state", args.seed), ("verbose", False))
                 if k in methods.get(name)._param_names()}
        m = methods.create(name, **extra).fit(train, val=parts["val"])
        scores[name] = {k: similarity(m, m.encode_images(p.image_features), m.encode_texts(p.text_features))[0]
                        for k, p in parts.items()}
    for within in (True, False):
        tag = "specialist" if within else "specialist (all negatives)"
        net = specialist(train, parts["val"], within=within, epochs=args.epochs, seed=args.seed)
        scores[tag] = {k: net.scores(p) for k, p in parts.items()}
    for name, S in scores.items():
        cells = [f"{k} mR {mean_recall(S[k], p):5.2f} oracle {mean_recall(S[k] + 100.0 * same_class(p), p):5.2f}"
                 for k, p in parts.items()]
        print(f"{name:28s} " + "  ".join(cells))
    for tag in ("specialist", "specialist (all negatives)"):
        for name in args.methods.split(","):
            for w in map(float, args.weights.split(",")):
                fused = {k: mean_recall(zscore(scores[name][k]) + w * zscore(scores[tag][k]), p)
                         for k, p in parts.items()}
                print(f"{name} + {w:g} x {tag}: val {fused['val']:5.2f} test {fused['test']:5.2f}")


if __name__ == "__main__":
    main()
