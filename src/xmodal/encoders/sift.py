"""SIFT bag of visual words (Lowe, "Distinctive Image Features from Scale-Invariant Keypoints",
IJCV 2004; Sivic & Zisserman, "Video Google", ICCV 2003), as in the Wikipedia release of
Rasiwasia et al. (ACM MM 2010): 128 k-means words, L1-normalised word histograms."""

from __future__ import annotations

import functools
import os
import zlib
from typing import Iterator

import numpy as np

from .base import EncoderError, progress_bar
from .images import ImageEncoder, iterate_batches, open_image

MAX_SIDE = 640  # larger images are downscaled first: bounds SIFT time, barely changes words


_CV2_PID = None


def _cv2():
    """OpenCV with its thread pool off. A pool started in a parent process leaves a forked
    decode worker with stale thread handles, and a later cv2.setNumThreads() in the worker
    joins threads that do not exist there: a silent hang. Parallelism comes from processes."""
    global _CV2_PID
    import cv2

    if _CV2_PID is None:  # once per process tree: forked workers inherit the setting
        cv2.setNumThreads(1)
        _CV2_PID = os.getpid()
    return cv2


def _gray(path: str, max_pixels: int | None) -> np.ndarray:
    im = open_image(path, max_pixels, draft_size=MAX_SIDE).convert("L")
    w, h = im.size
    if max(w, h) > MAX_SIDE:
        s = MAX_SIDE / max(w, h)
        im = im.resize((max(1, round(w * s)), max(1, round(h * s))))
    return np.asarray(im, dtype=np.uint8)


def sift_descriptors(path: str, max_pixels: int | None = None) -> np.ndarray:
    """(k, 128) float32 SIFT descriptors of one image (k may be 0)."""
    desc = _cv2().SIFT_create().detectAndCompute(_gray(path, max_pixels), None)[1]
    return np.zeros((0, 128), np.float32) if desc is None else desc.astype(np.float32)


def _sample_descriptors(path: str, per_image: int, max_pixels: int | None) -> np.ndarray:
    d = sift_descriptors(path, max_pixels)
    if len(d) > per_image:
        # Seeded by the image content so the sample (and the vocabulary) is reproducible.
        rng = np.random.default_rng(zlib.crc32(d.tobytes()))
        d = d[np.sort(rng.choice(len(d), per_image, replace=False))]
    return d


def assign_words(desc: np.ndarray, centers: np.ndarray) -> np.ndarray:
    if len(desc) == 0:
        return np.zeros(0, dtype=np.int64)
    d2 = (desc ** 2).sum(1)[:, None] - 2.0 * desc @ centers.T + (centers ** 2).sum(1)[None, :]
    return d2.argmin(axis=1)


def bovw_histogram(path: str, centers: np.ndarray, max_pixels: int | None = None) -> np.ndarray:
    """L1-normalised visual-word histogram (all zeros for an image without keypoints)."""
    words = assign_words(sift_descriptors(path, max_pixels), centers)
    h = np.bincount(words, minlength=len(centers)).astype(np.float32)
    return h / h.sum() if h.sum() > 0 else h


class SiftBoVW(ImageEncoder):
    """``sift-bovw`` (128 words) or ``sift-bovw:<k>``; fit learns the vocabulary with
    MiniBatchKMeans on descriptors sampled from the fit images."""

    version = "1"
    needs_fit = True
    default_batch_size = 16
    max_descriptors = 100_000  # k-means sample size over all fit images

    def __init__(self, spec: str, arg: str | None) -> None:
        super().__init__(spec)
        try:
            self.n_words = int(arg) if arg else 128
        except ValueError:
            raise EncoderError(f"{spec!r}: the vocabulary size must be an integer, got {arg!r}") from None
        if self.n_words < 2:
            raise EncoderError(f"{spec!r}: the vocabulary size must be at least 2")
        self.centers_: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.n_words

    @property
    def is_fitted(self) -> bool:
        return self.centers_ is not None

    def _workers(self, n: int, batch_size: int) -> int | None:
        if self.num_workers is not None:
            return self.num_workers
        from .base import cpu_count, thread_budget

        # All the work happens in the workers here, so use every core ($XMODAL_THREADS of
        # them; one thread: the main process alone).
        budget = thread_budget()
        if n <= batch_size or budget == 1:
            return 0
        return budget or cpu_count()

    def _fit(self, items: list[str], progress) -> None:
        from sklearn.cluster import MiniBatchKMeans

        per_image = max(16, self.max_descriptors // len(items))
        load = functools.partial(_sample_descriptors, per_image=per_image, max_pixels=self.max_pixels)
        parts, failed, bar = [], [], progress_bar(len(items), f"fit {self.spec}: SIFT", progress)
        try:
            for pos, arrays, fails in iterate_batches(items, load, self.default_batch_size,
                                                      self._workers(len(items), self.default_batch_size),
                                                      stack=False):
                parts.extend(arrays)
                for p, reason in fails:
                    self._skip(self.report_, items[p], reason)
                    failed.append((items[p], reason))
                bar.update(len(pos) + len(fails))
        finally:
            bar.close()
        desc = np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)
        if len(desc) < self.n_words:
            # unreadable fit images (all of them, say) are the likely reason: said here too
            why = f" ({len(failed)} could not be read; the first, {failed[0][0]}: {failed[0][1]})" \
                if failed else ""
            raise EncoderError(f"{self.spec}: only {len(desc)} SIFT descriptors in {len(items)} fit "
                               f"images{why}, fewer than the {self.n_words} words asked for")
        km = MiniBatchKMeans(n_clusters=self.n_words, random_state=0, n_init=3,
                             batch_size=4096, max_iter=100)
        from threadpoolctl import threadpool_limits

        # One OpenMP thread: k-means on ~1e5 points takes seconds anyway, while OpenMP threads
        # on a busy machine spin-wait and slow it down 10x or more.
        with threadpool_limits(limits=1, user_api="openmp"):
            km.fit(desc)
        self.centers_ = km.cluster_centers_.astype(np.float32)

    def _get_state(self):
        return {"n_words": self.n_words}, {"centers": self.centers_}

    def _set_state(self, meta, arrays) -> None:
        c = np.asarray(arrays["centers"], dtype=np.float32)
        if c.shape != (self.n_words, 128):
            raise EncoderError(f"{self.spec}: saved centers have shape {c.shape}, "
                               f"expected ({self.n_words}, 128)")
        self.centers_ = c

    def _compute(self, items, batch_size, bar) -> Iterator:
        load = functools.partial(bovw_histogram, centers=self.centers_, max_pixels=self.max_pixels)
        for pos, arrays, fails in iterate_batches(items, load, batch_size,
                                                  self._workers(len(items), batch_size), stack=False):
            feats = np.stack(arrays) if arrays else np.zeros((0, self.dim), np.float32)
            yield pos, feats, fails
