"""The one small trainer shared by every PyTorch method (deep real-valued and deep hashing).

A :class:`TorchMethod` builds an ``nn.Module`` from the feature dimensions (``_build``) and
defines a mini-batch loss (``_loss``); the trainer here does the rest: seeding, mini-batches,
Adam, early stopping on a validation split scored by retrieval quality, a progress bar with
the running loss, and ``save``/``load`` of the module's weights as plain arrays (no pickle).
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.dataset import DataError, PairedDataset
from ..device import get_device
from .base import CrossModalMethod, TrainingDivergedError, fit_caller_stacklevel, interval, one_of  # noqa: F401 (re-exported)


def seed_everything(seed: int) -> torch.Generator:
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_threads() -> int:
    """The deep methods' training threads: ``xmodal.device.default_threads``
    (``$XMODAL_THREADS``, else the CPU count capped at 8)."""
    from ..device import default_threads as threads

    return threads()


class TorchMethod(CrossModalMethod):
    """Base for methods trained with PyTorch on frozen features.

    Subclasses implement ``_build(image_dim, text_dim, n_labels) -> nn.Module`` whose module has
    ``encode_image(x)`` and ``encode_text(y)`` methods, and ``_loss(batch) -> Tensor`` where
    ``batch`` is a dict of tensors ``x``, ``y``, ``labels`` (or None) and ``index`` (rows of the
    training pairs) and ``image`` (the training image of each row, so that several captions of
    one image can be told apart from other images). Hooks: ``_on_epoch_start(epoch)`` (e.g.
    refresh codes), ``_setup(X, Y, L)`` before training (e.g. similarity matrices; the kept rows
    of the training set are ``self._rows`` and the dataset ``self._train``), ``_parameters()`` for
    custom optimiser groups, ``_batches(n, gen)`` for a custom batch sampler, ``_refresh()``
    before every validation and after training (e.g. a closed-form last stage), and
    ``_validation_result(vds)`` / ``_score_validation(res, vds)`` for custom validation, and
    ``_finish()`` once after training. Private attributes set during ``fit`` (names starting
    but not ending with ``_``) are dropped afterwards: they are training-only state.
    Optional attributes read with defaults (so older subclasses need not define them):
    ``grad_clip`` (max gradient norm, None = off) and ``lr_schedule`` ("constant" or "cosine").
    """

    _float64: ClassVar[bool] = False
    #: seconds between redraws of the progress bar (it shows the running loss of each step)
    _progress_mininterval: ClassVar[float] = 0.5
    _parameter_rules: ClassVar[dict[str, Any]] = {
        "epochs": interval(1, None, integer=True),
        "batch_size": interval(2, None, integer=True),
        "lr": interval(0, None, closed="neither"),
        "weight_decay": interval(0, None),
        "patience": [None, interval(1, None, integer=True)],
        "val_fraction": interval(0, 0.5),
        "random_state": interval(0, None, integer=True),
        "verbose": one_of(True, False),
    }

    # -------------------------------------------------------------- subclass API
    def _build(self, image_dim: int, text_dim: int, n_labels: int) -> nn.Module:
        raise NotImplementedError

    def _loss(self, batch: dict[str, torch.Tensor | None]) -> torch.Tensor:
        raise NotImplementedError

    def _setup(self, X: np.ndarray, Y: np.ndarray, L: np.ndarray | None) -> None:
        """Called once before training (full training arrays)."""

    def _on_epoch_start(self, epoch: int) -> None:
        """Called before each epoch."""

    def _parameters(self):
        return self.module_.parameters()

    def _param_groups(self) -> list[dict]:
        """``_parameters()`` as optimiser groups: a learned temperature (a parameter named
        ``logit_scale``) is not weight-decayed, as in CLIP (Radford et al. 2021), whose decay
        skips gains, biases and the temperature; decay would pull it towards scale 1."""
        temps = {id(p) for name, p in self.module_.named_parameters()
                 if name.rsplit(".", 1)[-1] == "logit_scale"}
        params = list(self._parameters())
        groups = [{"params": [p for p in params if id(p) not in temps]}]
        kept = [p for p in params if id(p) in temps]
        if kept:
            groups.append({"params": kept, "weight_decay": 0.0})
        return groups

    def _batches(self, n: int, gen: torch.Generator):
        """Index tensors of one epoch's mini-batches (default: a random permutation)."""
        perm = torch.randperm(n, generator=gen)
        for s in range(0, n, self.batch_size):
            yield perm[s:s + self.batch_size]

    def _refresh(self) -> None:
        """Called before each validation and once after training (module in eval mode)."""

    def _finish(self) -> None:
        """Called once after training, while the training-only state is still there."""

    @property
    def _device(self) -> torch.device:
        """Where the module and the training tensors live (:mod:`xmodal.device`)."""
        dev = self.__dict__.get("_dev")
        return dev if dev is not None else get_device()

    def _tensor(self, a: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An array (or CPU tensor) on the training device."""
        t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
        return t.to(self._device)

    # -------------------------------------------------------------- training
    def _fit(self, X, Y, L, *, train: PairedDataset, val: PairedDataset | None) -> None:
        gen = seed_everything(self.random_state)
        torch.set_num_threads(default_threads())
        self._dev = get_device()
        self.n_labels_ = 0 if L is None else int(L.shape[1])
        val_arrays = self._validation_arrays(train, val)
        rows = np.arange(len(X))
        if val_arrays is not None and val is None:
            # hold-out images came from train: drop their texts from training
            keep = val_arrays[3]
            X, Y, L = X[keep], Y[keep], None if L is None else L[keep]
            rows = rows[keep]
        before = set(self.__dict__)
        self._rows, self._train = rows, train
        self._image = self._tensor(np.asarray(train.text_to_image)[rows])
        self.module_ = self._build(X.shape[1], Y.shape[1], self.n_labels_).to(self._dev)
        self._X, self._Y = self._tensor(X), self._tensor(Y)
        self._L = None if L is None else self._tensor(L)
        self._setup(X, Y, L)
        opt = torch.optim.Adam(self._param_groups(), lr=self.lr, weight_decay=self.weight_decay)
        # CLIP clips the learned temperature to [0, log 100] after each step; a clamp in the
        # forward pass alone leaves a logit scale above log 100 without gradient, stuck for good
        temps = [p for name, p in self.module_.named_parameters() if name.rsplit(".", 1)[-1] == "logit_scale"]
        n = len(X)
        # optimiser steps of the default sampler: a last batch of one row is skipped below, so
        # it is no step of the bar's total nor of the cosine schedule's length
        steps_per_epoch = max(1, n // self.batch_size + (n % self.batch_size >= 2))
        sched = None
        if getattr(self, "lr_schedule", "constant") == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.epochs * steps_per_epoch)
        clip = getattr(self, "grad_clip", None)
        best, best_state, bad, history = -math.inf, None, 0, []
        # one bar tick per mini-batch step, its loss the running mean of the epoch so far: a
        # bar over epochs sat at 0% with no loss through a long first epoch
        show = self.verbose and sys.stderr.isatty()
        bar = tqdm(total=self.epochs * steps_per_epoch, desc=self.name, unit="step", disable=not show,
                   leave=False, mininterval=self._progress_mininterval, file=sys.stderr)
        shown: dict[str, str] = {}
        for epoch in range(self.epochs):
            self.module_.train()
            self._on_epoch_start(epoch)
            total, seen = 0.0, 0
            shown["epoch"] = f"{epoch + 1}/{self.epochs}"
            for step, idx in enumerate(self._batches(n, gen)):
                if len(idx) < 2:
                    continue
                idx = idx.to(self._dev)  # the sampler draws on the CPU: same batches everywhere
                batch = {"x": self._X[idx], "y": self._Y[idx], "index": idx, "image": self._image[idx],
                         "labels": None if self._L is None else self._L[idx]}
                loss = self._loss(batch)
                opt.zero_grad()
                loss.backward()
                # the gradient norm (clipped or not) is finite only if every gradient is
                norm = nn.utils.clip_grad_norm_(self.module_.parameters(), clip or math.inf)
                if not (torch.isfinite(loss.detach()) and torch.isfinite(norm)):
                    raise TrainingDivergedError(
                        f"{self.name}: training diverged at epoch {epoch + 1}, step {step + 1} (non-finite "
                        f"{'loss' if not torch.isfinite(loss.detach()) else 'gradient'}); try a lower "
                        f"learning rate (lr={self.lr}), a larger batch_size"
                        + (" or grad_clip" if "grad_clip" in self.get_params() else ""))
                opt.step()
                with torch.no_grad():
                    for p in temps:
                        p.clamp_(0.0, math.log(100.0))
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(idx)
                seen += len(idx)
                if show:
                    shown["loss"] = f"{total / seen:.4f}"
                    bar.set_postfix(shown, refresh=False)
                    bar.update(1)
            epoch_loss = total / max(seen, 1)
            record = {"epoch": epoch, "loss": epoch_loss}
            if val_arrays is not None and self.patience is not None:
                score = self._validation_score(*val_arrays[:3])
                record["val"] = score
                if score > best + 1e-6:
                    best, bad = score, 0
                    best_state = {k: v.detach().clone() for k, v in self.module_.state_dict().items()}
                else:
                    bad += 1
            history.append(record)
            if show:
                if "val" in record:
                    shown["val"] = f"{record['val']:.4f}"
                bar.set_postfix(shown)
            if self.patience is not None and bad >= self.patience:
                break
        bar.close()
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        self.module_.eval()
        self._refresh()
        self.history_ = history
        self.best_val_ = None if best == -math.inf else float(best)
        self._finish()
        # Training-only state (features, graphs, regions, token ids) would otherwise stay in
        # memory for the model's lifetime: TERAN's regions alone are ~0.4 GB on UCM-Captions.
        for name in set(self.__dict__) - before:
            if name.startswith("_") and not name.endswith("_"):
                del self.__dict__[name]

    def _validation_arrays(self, train: PairedDataset, val: PairedDataset | None):
        """(X_img, Y_txt, dataset, keep_mask_for_train_texts) for early stopping, or None."""
        if self.patience is None:
            return None
        if val is not None:
            missing = [f for f in ("image_features", "text_features") if getattr(val, f) is None]
            if missing:
                # ignoring it would early-stop on a hold-out of train instead, unasked
                raise DataError(f"{self.name}: validation dataset {val.name!r} has no field "
                                f"{' or '.join(missing)}; encode it like the training split "
                                "(or pass no val: a hold-out of train is used)")
            return val.image_features.astype(np.float32), val.text_features.astype(np.float32), val, None
        if self.val_fraction <= 0 or train.n_images < 20:
            # asked for early stopping but none can run: say so instead of training on in silence
            why = ("val_fraction=0 and no val split was passed" if self.val_fraction <= 0 else
                   f"dataset {train.name!r} has {train.n_images} training images, too few for a "
                   "hold-out (20 needed)")
            warnings.warn(f"{self.name}: patience={self.patience} but no validation split: {why}; "
                          "training runs all epochs (pass val=..., or patience=None)",
                          stacklevel=fit_caller_stacklevel())
            return None
        rng = np.random.default_rng(self.random_state)
        n_val = max(10, int(round(self.val_fraction * train.n_images)))
        held = np.sort(rng.choice(train.n_images, n_val, replace=False))
        vds = train.subset(held, name=f"{train.name}/holdout")
        keep = ~np.isin(train.text_to_image, held)
        return vds.image_features.astype(np.float32), vds.text_features.astype(np.float32), vds, keep

    def _validation_score(self, Xv: np.ndarray, Yv: np.ndarray, vds: PairedDataset) -> float:
        """Mean of both directions' mAP (labelled data) or mean Recall@1/5/10 (otherwise)."""
        self.module_.eval()
        self.fitted_ = True
        try:
            with torch.no_grad():
                self._refresh()
            res = self._validation_result(vds)
        finally:
            self.module_.train()
        return self._score_validation(res, vds)

    def _validation_result(self, vds: PairedDataset) -> dict:
        from ..evaluation.protocol import evaluate

        return evaluate(self, vds, pk=(), rk=(1, 5, 10))

    def _score_validation(self, res: dict, vds: PairedDataset) -> float:
        if vds.labels is not None:
            return 0.5 * (res["i2t"]["map"] + res["t2i"]["map"])
        return res["mR"]

    # -------------------------------------------------------------- encoding
    @torch.inference_mode()
    def _run(self, fn, Z: np.ndarray, batch: int = 4096) -> np.ndarray:
        self.module_.eval()
        if len(Z) == 0:  # zero rows still have the embedding's width, as X @ W would
            return fn(self._tensor(np.zeros((0, Z.shape[1]), np.float32))).cpu().numpy()
        out = [fn(self._tensor(np.asarray(Z[s:s + batch], dtype=np.float32))).cpu().numpy()
               for s in range(0, len(Z), batch)]
        return np.concatenate(out)

    def _encode_images(self, X: np.ndarray) -> np.ndarray:
        return self._run(self.module_.encode_image, X)

    def _encode_texts(self, Y: np.ndarray) -> np.ndarray:
        return self._run(self.module_.encode_text, Y)

    # -------------------------------------------------------------- persistence
    def _get_state(self) -> dict[str, Any]:
        state = {k: v for k, v in super()._get_state().items() if k not in ("module_",)}
        for k, v in self.module_.state_dict().items():
            state[f"module__{k}"] = v.detach().cpu().numpy()
        state["history_"] = [{k: float(v) for k, v in r.items()} for r in getattr(self, "history_", [])]
        return state

    def _set_state(self, state: dict[str, Any]) -> None:
        weights = {k[len("module__"):]: torch.from_numpy(np.asarray(v)) for k, v in state.items()
                   if k.startswith("module__")}
        super()._set_state({k: v for k, v in state.items() if not k.startswith("module__")})
        self.module_ = self._build(int(self.image_dim_), int(self.text_dim_), int(self.n_labels_))
        try:
            self.module_.load_state_dict(weights)
        except RuntimeError:
            if not getattr(self, "dropout", 0):
                raise
            # Saved before ``dropout`` reached these towers: trained without Dropout layers,
            # whose places in the layer list then differ. Dropout does nothing at inference,
            # so the model is rebuilt without it and serves exactly as it did.
            wanted, self.dropout = self.dropout, 0.0
            try:
                self.module_ = self._build(int(self.image_dim_), int(self.text_dim_), int(self.n_labels_))
            finally:
                self.dropout = wanted
            self.module_.load_state_dict(weights)
        self._dev = get_device()  # trained anywhere, runs on this process's device
        self.module_.to(self._dev).eval()


def mlp(dims: list[int], dropout: float = 0.0, final_activation: bool = False,
        norm: bool = False) -> nn.Sequential:
    """Linear layers with ReLU between them (and optional BatchNorm/dropout)."""
    layers: list[nn.Module] = []
    for i in range(len(dims) - 1):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        last = i == len(dims) - 2
        if not last or final_activation:
            if norm:
                layers.append(nn.BatchNorm1d(dims[i + 1]))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)
