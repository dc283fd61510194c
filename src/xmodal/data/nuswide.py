"""NUS-WIDE (Chua et al., "NUS-WIDE: A Real-World Web Image Database from National University of
Singapore", CIVR 2009) in its official release layout, with the cross-modal hashing protocol
(DCMH, Jiang & Li 2017): the images of the most frequent concepts, 1000-d tag vectors as text.

Release layout read (under ``ROOT/nus_wide`` or ROOT itself)::

    ImageList/Imagelist.txt                one image path per line (``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg``
                                           or ``actor\\0001_2124494179.jpg``)
    NUS_WID_Tags/AllTags1k.txt             one row per image: 1000 0/1 tag indicators
    NUS_WID_Tags/TagList1k.txt             optional: the 1000 tag names (gives raw ``texts``)
    Concepts81.txt                         concept names (also found in ConceptsList/ or NUS_WID_Tags/)
    Groundtruth/AllLabels/Labels_<c>.txt   one 0/1 per image line, for each concept
                                           (each zip's files may also sit straight in ROOT)
    ImageList/TrainImagelist.txt, TestImagelist.txt
                                           the official split (``actor\\0001_2124494179.jpg``);
                                           read for ``split="official"`` and for the split files:
    Groundtruth/TrainTestLabels/Labels_<c>_Train.txt, _Test.txt
                                           read when there is no AllLabels/: one 0/1 per line of
                                           TrainImagelist.txt / TestImagelist.txt
    NUS_WID_Tags/Train_Tags1k.dat, Test_Tags1k.dat
                                           read when there is no AllTags1k.txt, likewise
    Flickr/<category>/<file>.jpg           optional: the images, for an image encoder (also found
                                           flat, as ``images/<file>.jpg``)

The cleaned lists of deep hashing code (DCHMT and its followers: ``all_imgs.txt``,
``all_tags.txt`` comma-separated, ``all_labels.txt`` N x 21, ``TagList1k.txt`` beside them or in
``Concepts/``) load too (:func:`~xmodal.data.mirflickr.load_cleaned_lists`).
The ``*_cnn.mat`` feature files of hashing papers (``nus_cnn.mat``: ``I_tr``/``T_tr``/``L_tr``,
``_te``, ``_db``) go through ``load_dataset(path)`` (:func:`~xmodal.data.mirflickr.load_cnn_mat`);
a folder holding only such a file is loaded the same way, and so is a folder holding the DCMH
``.mat`` layout (``nus-wide-tc10-iall.mat``, ``-yall.mat``, ``-lall.mat``;
:func:`~xmodal.data.dcmh_mat.load_dcmh_mat`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._probe import first_rule
from .dataset import DataError, PairedDataset, read_text
from .mirflickr import hashing_splits, load_cleaned_lists, load_cnn_mat

N_TAGS = 1000
CONCEPT_FILES = ("Concepts81.txt", "ConceptsList/Concepts81.txt", "NUS_WID_Tags/Concepts81.txt")
TAGLIST_DIRS = (".", "Concepts", "NUS_WID_Tags")  # where the cleaned lists keep TagList1k.txt
_DRIVE_RE = re.compile(r"^[A-Za-z]:/")


def _nonblank_lines(path: Path) -> list[str]:
    """Lines of ``path``; trailing blank lines are dropped, inner ones are an error."""
    lines = read_text(path, strict=False).splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise DataError(f"{path}:{i}: empty line")
    return [line.strip() for line in lines]


def relative_image_path(entry: str) -> str:
    """``C:\\ImageData\\Flickr\\actor\\0001_2.jpg`` -> ``actor/0001_2.jpg`` (relative to ``Flickr/``)."""
    p = entry.strip().replace("\\", "/")
    low = p.lower()
    cut = low.rfind("flickr/")
    if cut >= 0 and (cut == 0 or low[cut - 1] == "/"):
        return p[cut + len("flickr/"):]
    return _DRIVE_RE.sub("", p).lstrip("/")


def read_tag_matrix(path: Path, n_rows: int, n_cols: int = N_TAGS, list_name: str = "the image list") -> np.ndarray:
    """``n_rows`` x ``n_cols`` uint8 matrix of a whitespace-separated 0/1 file, streamed line by
    line (the release file is ~540 MB); errors name the file and line."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    out = np.zeros((n_rows, n_cols), dtype=np.uint8)
    width = 2 * n_cols - 1
    row = 0
    first_blank = 0  # blank lines may only close the file
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip()
            if not line:
                first_blank = first_blank or lineno
                continue
            if first_blank:
                raise DataError(f"{path}:{first_blank}: empty line")
            if row >= n_rows:
                raise DataError(f"{path}:{lineno}: more rows than the {n_rows} images {list_name} lists")
            line = line.lstrip()
            # Fast path for the release format: single-character values, one separator each.
            if len(line) == width and line[1::2].isspace() and not line[0::2].translate(None, b"01"):
                out[row] = np.frombuffer(line[0::2], dtype=np.uint8) - ord("0")
            else:
                vals = line.split()
                if len(vals) != n_cols:
                    raise DataError(f"{path}:{lineno}: expected {n_cols} tag values, got {len(vals)}")
                for c, v in enumerate(vals):
                    if v not in (b"0", b"1"):
                        raise DataError(f"{path}:{lineno}: column {c + 1}: value "
                                        f"{v.decode(errors='replace')!r} is not 0 or 1")
                out[row] = np.frombuffer(b"".join(vals), dtype=np.uint8) - ord("0")
            row += 1
    if row != n_rows:
        raise DataError(f"{path}: {row} rows, but {list_name} lists {n_rows} images")
    return out


def _fixed_width_column(data: bytes, n_rows: int) -> np.ndarray | None:
    """The values of a column file written exactly as the release writes it (one ``0``/``1``
    per line, ``\\n`` or ``\\r\\n`` endings), parsed without a Python loop over its lines
    (81 concepts x 269,648 lines); None for any other spelling, which the caller parses line
    by line (and names the bad line)."""
    if data and not data.endswith(b"\n"):
        data += b"\n"
    for end in (b"\n", b"\r\n"):
        width = 1 + len(end)
        if len(data) != n_rows * width:
            continue
        cells = np.frombuffer(data, dtype=np.uint8).reshape(n_rows, width)
        if (cells[:, 1:] == np.frombuffer(end, dtype=np.uint8)).all():
            values = cells[:, 0] - ord("0")  # uint8: anything below '0' wraps above 1
            if (values <= 1).all():
                return values.copy()
    return None


def read_label_column(path: Path, n_rows: int, list_name: str = "the image list") -> np.ndarray:
    """One 0/1 value per line (``Groundtruth/AllLabels/Labels_<concept>.txt``, or the
    ``TrainTestLabels/Labels_<concept>_Train.txt`` / ``_Test.txt`` of one split list)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    fast = _fixed_width_column(data, n_rows)
    if fast is not None:
        return fast
    lines = data.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) > n_rows:
        raise DataError(f"{path}:{n_rows + 1}: more lines than the {n_rows} images {list_name} lists "
                        f"({len(lines)} lines)")
    if len(lines) != n_rows:
        raise DataError(f"{path}: {len(lines)} lines, but {list_name} lists {n_rows} images")
    joined = b"".join(line.strip() for line in lines)
    if len(joined) != n_rows or joined.translate(None, b"01"):
        for i, line in enumerate(lines, 1):
            if line.strip() not in (b"0", b"1"):
                raise DataError(f"{path}:{i}: expected 0 or 1, got {line.strip().decode(errors='replace')!r}")
    return np.frombuffer(joined, dtype=np.uint8) - ord("0")


def read_feature_file(path: Path, n_rows: int) -> np.ndarray:
    """Precomputed image features, one row per image list line: ``.npy`` or whitespace text
    (e.g. the release's ``Low_Level_Features/BoW_int.dat``, 500-d SIFT bag of words)."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix.lower() == ".npy":
        try:
            X = np.load(path)
        except Exception as exc:  # numpy raises several types for corrupt files
            raise DataError(f"{path}: cannot read .npy file ({exc})") from exc
    else:
        try:
            X = np.loadtxt(path, dtype=np.float32, ndmin=2)
        except ValueError:
            X = None
        if X is None:  # find the offending line for the message
            width = None
            for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                vals = line.split()
                if not vals:
                    continue
                try:
                    [float(v) for v in vals]
                except ValueError:
                    raise DataError(f"{path}:{i}: non-numeric value in {line.strip()[:60]!r}") from None
                if width is not None and len(vals) != width:
                    raise DataError(f"{path}:{i}: {len(vals)} values, earlier rows have {width}")
                width = len(vals)
            raise DataError(f"{path}: cannot read as a whitespace-separated matrix")
    X = np.asarray(X)
    if not (np.issubdtype(X.dtype, np.number) or X.dtype == bool):
        raise DataError(f"{path}: feature matrix holds {X.dtype} values, not numbers")
    if X.ndim != 2 or len(X) != n_rows:
        raise DataError(f"{path}: feature matrix has shape {X.shape}, expected {n_rows} rows "
                        "(one per ImageList/Imagelist.txt line)")
    return X.astype(np.float32)


def _image_layout(root: Path, image_dir: str | Path | None, rel: list[str]) -> tuple[Path, bool]:
    """(folder, flat): where the images are, and whether they sit there without Imagelist.txt's
    category sub-folders (``images/0001_2124494179.jpg``, as mirrors and URL downloads keep
    them). The first candidate holding one of the first images wins: ``image_dir``, else
    ``Flickr/`` (the release's image archive), ``images/``, ``Images/``, the dataset folder."""
    bases = [Path(image_dir)] if image_dir is not None else \
        [b for b in (root / "Flickr", root / "images", root / "Images", root) if b.is_dir()]
    rules = [(base, flat) for base in bases for flat in (False, True)]
    found = first_rule(rules, rel, lambda r, p: r[0] / (Path(p).name if r[1] else p))
    return found or (bases[0], False)  # no image found: paths as the release's Flickr/ folder holds them


def _first_existing(root: Path, rels: tuple[str, ...]) -> Path:
    """The first of ``root/rel`` that exists: the release's zips unpacked with their folders
    (``ImageList/``, ``NUS_WID_Tags/``, ``Groundtruth/``), or straight into ``root``. The
    first one when none does, for the error that names it."""
    return next((root / r for r in rels if (root / r).exists()), root / rels[0])


def _find_root(data_dir: str | None) -> Path:
    # The release (its zips unpacked with or without their folders), then the cleaned lists.
    from .dcmh_mat import find_root

    return find_root("nus_wide", data_dir, ("ImageList", "Imagelist.txt", "all_imgs.txt", "index.mat"))


def _find_concepts(root: Path) -> Path:
    for rel in CONCEPT_FILES:
        if (root / rel).exists():
            return root / rel
    raise DataError(f"{root / CONCEPT_FILES[0]}: file not found (also looked for "
                    f"{', '.join(CONCEPT_FILES[1:])})")


@dataclass(frozen=True)
class ReleaseFiles:
    """The release files the loader reads from a NUS-WIDE folder, whichever zips it holds.

    Labels come from ``Groundtruth/AllLabels/`` when that folder exists, else from
    ``Groundtruth/TrainTestLabels/`` (one file per concept and split list); tags from
    ``AllTags1k.txt`` when it exists, else from ``Train_Tags1k.dat`` and ``Test_Tags1k.dat``.
    The split files follow the rows of ``TrainImagelist.txt`` / ``TestImagelist.txt`` (beside
    ``Imagelist.txt``), so those lists are read whenever a split file is, and for
    ``split="official"``."""

    image_list: Path
    train_list: Path
    test_list: Path
    tag_files: tuple[Path, ...]  # (AllTags1k.txt,) or (Train_Tags1k.dat, Test_Tags1k.dat)
    tag_list: Path  # TagList1k.txt beside the tag files; may not exist
    label_dir: Path  # AllLabels/ or TrainTestLabels/; may not exist (the error names AllLabels/)

    @property
    def split_tags(self) -> bool:
        return len(self.tag_files) == 2

    @property
    def split_labels(self) -> bool:
        return self.label_dir.name == "TrainTestLabels"

    def lists_read(self, official: bool = False) -> tuple[Path, ...]:
        """The image lists read: ``Imagelist.txt``, and the split lists when a split file is
        read or the split is the official one."""
        if official or self.split_tags or self.split_labels:
            return self.image_list, self.train_list, self.test_list
        return (self.image_list,)


def release_files(root: Path) -> ReleaseFiles:
    """Which of the release's files :func:`load_nus_wide` reads under ``root`` (also what
    :func:`~xmodal.data.dataset_files` fingerprints)."""
    image_list = _first_existing(root, ("ImageList/Imagelist.txt", "Imagelist.txt"))
    all_tags = _first_existing(root, ("NUS_WID_Tags/AllTags1k.txt", "AllTags1k.txt"))
    if all_tags.exists():
        tag_files: tuple[Path, ...] = (all_tags,)
    else:
        train_tags = _first_existing(root, ("NUS_WID_Tags/Train_Tags1k.dat", "Train_Tags1k.dat"))
        tag_files = (train_tags, train_tags.parent / "Test_Tags1k.dat") if train_tags.exists() else (all_tags,)
    label_dir = _first_existing(root, ("Groundtruth/AllLabels", "GroundTruth/AllLabels", "AllLabels"))
    if not label_dir.is_dir():
        split_dir = _first_existing(root, ("Groundtruth/TrainTestLabels", "GroundTruth/TrainTestLabels",
                                           "TrainTestLabels"))
        label_dir = split_dir if split_dir.is_dir() else label_dir
    return ReleaseFiles(image_list, image_list.parent / "TrainImagelist.txt",
                        image_list.parent / "TestImagelist.txt", tag_files,
                        tag_files[0].parent / "TagList1k.txt", label_dir)


def official_rows(files: ReleaseFiles, entries: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``Imagelist.txt`` (``entries``) listed by ``TrainImagelist.txt`` and by
    ``TestImagelist.txt``, each in its list's order. The two lists must split the image list
    exactly; the error names the file and line of the first image that does not. Images are
    matched by their path under ``Flickr/`` (the lists write ``actor\\0001_2124494179.jpg``,
    the image list ``C:\\ImageData\\Flickr\\actor\\...``), case aside as Windows, where the
    lists were written, ignores it."""
    index: dict[str, int] = {}
    for i, entry in enumerate(entries):
        first = index.setdefault(relative_image_path(entry).lower(), i)
        if first != i:
            raise DataError(f"{files.image_list}:{i + 1}: {entry!r} is listed twice (first at line {first + 1})")
    owner = np.zeros(len(entries), dtype=np.int8)  # 0: no list yet, 1: train, 2: test
    owner_line = np.zeros(len(entries), dtype=np.int64)
    out = []
    for which, path in ((1, files.train_list), (2, files.test_list)):
        listed = _nonblank_lines(path)
        rows = np.empty(len(listed), dtype=np.int64)
        for k, entry in enumerate(listed):
            r = index.get(relative_image_path(entry).lower())
            if r is None:
                raise DataError(f"{path}:{k + 1}: {entry!r} is not in {files.image_list.name}")
            if owner[r]:
                other = (files.train_list, files.test_list)[owner[r] - 1].name
                raise DataError(f"{path}:{k + 1}: {entry!r} is also listed at {other}:{owner_line[r]}")
            owner[r], owner_line[r], rows[k] = which, k + 1, r
        out.append(rows)
    missing = np.flatnonzero(owner == 0)
    if missing.size:
        r = int(missing[0])
        raise DataError(f"{files.image_list}:{r + 1}: {entries[r]!r} is in neither "
                        f"{files.train_list.name} nor {files.test_list.name}")
    return out[0], out[1]


def _label_column(files: ReleaseFiles, concept: str, n: int, rows: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """The 0/1 column of ``concept`` over the ``n`` images of ``Imagelist.txt``: its AllLabels
    file, or its ``_Train`` and ``_Test`` files put back in image-list order by ``rows``."""
    if not files.split_labels:
        path = files.label_dir / f"Labels_{concept}.txt"
        if not files.label_dir.is_dir():
            raise DataError(f"{path}: file not found (nor is there a Groundtruth/TrainTestLabels/ folder)")
        return read_label_column(path, n, files.image_list.name)
    column = np.zeros(n, dtype=np.uint8)
    for part, lst, suffix in zip(rows, (files.train_list, files.test_list), ("Train", "Test")):
        column[part] = read_label_column(files.label_dir / f"Labels_{concept}_{suffix}.txt", len(part), lst.name)
    return column


SPLITS = ("random", "official")


def _fixed_concepts(ds: PairedDataset, n_concepts: int | None, label_file: Path | str,
                    require_tag: bool | None = None) -> PairedDataset:
    """``ds``, from a layout whose label file fixed its concepts and images (cleaned lists,
    ``.mat`` files), when ``n_concepts`` is not given or is that count: a top-10 request
    answered with a tc21 release's 21 columns would change every relevance judgement
    unnoticed. ``require_tag`` (the release's image filter) must not be given either."""
    if require_tag is not None:
        raise DataError(f"{label_file}: require_tag applies to the release layout (AllTags1k.txt); this "
                        "copy fixed its images already")
    have = ds.labels.shape[1]
    if n_concepts is not None and n_concepts != have:
        raise DataError(f"{label_file}: this NUS-WIDE copy fixes its {have} concepts, but n_concepts={n_concepts} "
                        "was asked for (the release layout, Groundtruth/AllLabels/ with Concepts81.txt, "
                        "lets the loader choose them)")
    return ds


def load_nus_wide(data_dir: str | None = None, n_concepts: int | None = None, concepts: list[str] | None = None,
                  n_query: int | None = None, n_train: int | None = None, seed: int | None = None,
                  image_features: str | Path | None = None, image_dir: str | Path | None = None,
                  split: str = "random", require_tag: bool | None = None) -> PairedDataset:
    """NUS-WIDE with the hashing protocol of most cross-modal papers.

    Keeps the images labelled with at least one of the ``n_concepts`` most frequent concepts
    (10 by default; 21 is the other common choice; or the names in ``concepts``; the cleaned
    lists and ``.mat`` layouts fix their own, and refuse an ``n_concepts`` that is not their
    label count) and with at
    least one of the 1000 tags (``require_tag``, True by default: DCMH quotes 195,834 images
    for the top 21 concepts and its followers 186,577 for the top 10 without saying whether
    untagged images were dropped; ``meta["untagged_dropped"]`` counts them, and
    ``require_tag=False`` keeps them with an all-zero tag vector). Labels are those concepts
    (multi-label, columns in the order of
    ``Concepts81.txt``); text features are the 1000-d 0/1 tag vectors.

    Splits, ``split="random"`` (the default): ``n_query`` random queries (2100 by default;
    also ``test``), the rest is the retrieval ``database``, ``n_train`` training images (10500
    by default) drawn from the database; all seeded by ``seed``. ``split="official"``: the
    release's own split, the kept images of ``TrainImagelist.txt`` are ``train`` (and the
    ``database``), those of ``TestImagelist.txt`` are ``test`` (and the ``query`` split);
    ``n_query`` and ``n_train`` do not apply.

    A copy without ``Groundtruth/AllLabels/`` reads ``Groundtruth/TrainTestLabels/`` (one
    file per concept and split list), and one without ``AllTags1k.txt`` reads
    ``Train_Tags1k.dat`` and ``Test_Tags1k.dat``: their rows are put back in ``Imagelist.txt``
    order through the split lists, so such a copy loads the same dataset as a full one.

    No image features unless ``image_features`` names a file (absolute, or relative to the
    dataset folder) with one row per ``Imagelist.txt`` line; otherwise encode ``image_paths``
    (under ``image_dir``, default ``Flickr/`` when present) with an image encoder.
    """
    if require_tag is not None and not isinstance(require_tag, bool):
        raise DataError(f"nus_wide: require_tag must be True or False, got {require_tag!r}")
    if split not in SPLITS:
        raise DataError(f"nus_wide: split must be 'random' or 'official', got {split!r}")
    official = split == "official"
    if official and (n_query is not None or n_train is not None):
        raise DataError("nus_wide: n_query and n_train apply to split='random'; split='official' takes "
                        "the release's TrainImagelist.txt and TestImagelist.txt as they are")
    split_options = {"n_query": n_query, "n_train": n_train, "seed": seed}
    n_query = 2100 if n_query is None else n_query
    n_train = 10500 if n_train is None else n_train
    seed = 0 if seed is None else seed
    root = _find_root(data_dir)
    if image_dir is not None and not Path(image_dir).is_dir():
        raise DataError(f"{image_dir}: image folder not found (images of {root})")
    files = release_files(root)
    list_path = files.image_list
    if official and not list_path.exists():
        raise DataError(f"{root}: split='official' needs the release's ImageList/Imagelist.txt, "
                        "TrainImagelist.txt and TestImagelist.txt; this folder has no Imagelist.txt")
    if not list_path.exists() and (root / "all_imgs.txt").exists():
        if concepts is not None or image_features is not None:
            raise DataError(f"{root / 'all_labels.txt'}: the cleaned lists fix their concepts and have "
                            "no image features; concepts and image_features do not apply")
        taglist = next((root / d / "TagList1k.txt" for d in TAGLIST_DIRS
                        if (root / d / "TagList1k.txt").is_file()), None)
        ds = load_cleaned_lists(root, "nus_wide", n_query=n_query, n_train=n_train, seed=seed,
                                vocabulary=_nonblank_lines(taglist) if taglist else None,
                                image_root=image_dir)
        ds.meta["text_feature"] = "tags1k" if taglist else "tags"
        return _fixed_concepts(ds, n_concepts, root / "all_labels.txt", require_tag)
    if not list_path.exists():
        from .dcmh_mat import mat_files

        mats = mat_files(root, "*_cnn.mat")  # not a macOS "._NAME" beside it
        if mats:
            return _fixed_concepts(load_cnn_mat(mats[0], name="nus_wide", **split_options), n_concepts, mats[0], require_tag)
        from .dcmh_mat import find_dcmh_files, is_index_caption_folder, load_dcmh_mat, load_index_caption_mat

        if is_index_caption_folder(root) and concepts is None and image_features is None:
            return _fixed_concepts(load_index_caption_mat(root, name="nus_wide", n_query=n_query, n_train=n_train,
                                                          seed=seed, image_dir=image_dir),
                                   n_concepts, root / "label.mat", require_tag)
        if find_dcmh_files(root):
            # The release fixed its concepts (LAll) and image set; only the splits are ours.
            if concepts is not None or image_features is not None or image_dir is not None:
                raise DataError(f"{root}: the DCMH .mat layout fixes its concepts and images; "
                                "concepts, image_features and image_dir do not apply")
            # split options as given: none given, a split the file carries is followed
            ds = load_dcmh_mat(root, name="nus_wide", **split_options,
                               default_sizes=(2100, 10500))
            return _fixed_concepts(ds, n_concepts, ds.meta["sources"]["LAll"], require_tag)
    entries = _nonblank_lines(list_path)
    n = len(entries)
    src = list_path.name
    rows = official_rows(files, entries) if len(files.lists_read(official)) > 1 else None
    vocab = None
    if files.tag_list.exists():
        vocab = _nonblank_lines(files.tag_list)
    n_cols = len(vocab) if vocab else N_TAGS
    if files.split_tags:
        tags = np.zeros((n, n_cols), dtype=np.uint8)
        for path, part, lst in zip(files.tag_files, rows, (files.train_list, files.test_list)):
            tags[part] = read_tag_matrix(path, len(part), n_cols, lst.name)
    else:
        tags = read_tag_matrix(files.tag_files[0], n, n_cols, src)

    concept_path = _find_concepts(root)
    all_concepts = _nonblank_lines(concept_path)
    seen: set[str] = set()
    for i, c in enumerate(all_concepts, 1):
        if c in seen:  # its label column would be read, counted and kept twice
            raise DataError(f"{concept_path}:{i}: concept {c!r} listed twice")
        seen.add(c)
    if concepts is not None:
        if not concepts:
            raise DataError("nus_wide: concepts is empty; name at least one concept")
        unknown = [c for c in concepts if c not in all_concepts]
        if unknown:
            raise DataError(f"{concept_path}: unknown concepts {unknown}")
        wanted = set(concepts)
        all_concepts = [c for c in all_concepts if c in wanted]
    elif not 1 <= (n_concepts := 10 if n_concepts is None else n_concepts) <= len(all_concepts):
        raise DataError(f"nus_wide: n_concepts={n_concepts}, but {concept_path} lists "
                        f"{len(all_concepts)} concepts")
    columns = np.stack([_label_column(files, c, n, rows) for c in all_concepts], axis=1)
    counts = columns.sum(axis=0, dtype=np.int64)
    if concepts is None:
        # Most frequent first; ties keep the concept-list order. Columns stay in list order.
        top = np.sort(np.argsort(-counts, kind="stable")[:n_concepts])
    else:
        top = np.arange(len(all_concepts))
    labels = columns[:, top]
    label_names = [all_concepts[i] for i in top]

    labelled = labels.sum(axis=1) > 0
    tagged = tags.sum(axis=1) > 0
    require_tag = True if require_tag is None else require_tag
    keep = np.flatnonzero(labelled & tagged if require_tag else labelled)
    untagged_dropped = int((labelled & ~tagged).sum()) if require_tag else 0
    m = len(keep)
    what = f"images with {'a tag and ' if require_tag else ''}one of the concepts {label_names}"
    if official:
        in_train = np.zeros(n, dtype=bool)
        in_train[rows[0]] = True
        train, test = np.flatnonzero(in_train[keep]), np.flatnonzero(~in_train[keep])
        for part, lst in ((train, files.train_list), (test, files.test_list)):
            if not len(part):
                raise DataError(f"{lst}: none of its images is among the {what}")
        splits = {"train": train, "query": test, "test": test, "database": train}
    else:
        splits = hashing_splits(m, n_query, n_train, seed, name="nus_wide", what=f"the {m} {what}")
    X = None
    feature_name = None
    if image_features is not None:
        fpath = Path(image_features)
        fpath = fpath if fpath.is_absolute() else root / fpath
        X = read_feature_file(fpath, n)[keep]
        feature_name = fpath.stem

    rel = [relative_image_path(entries[i]) for i in keep]
    base, flat = _image_layout(root, image_dir, rel)
    if flat:
        rel = [Path(p).name for p in rel]
    T = tags[keep].astype(np.float32)
    texts = None
    if vocab is not None:
        texts = [" ".join(vocab[j] for j in np.flatnonzero(row)) for row in tags[keep]]
    return PairedDataset(
        name="nus_wide", text_to_image=np.arange(m), n_images=m,
        image_features=X, image_paths=[str(base / p) for p in rel], text_features=T, texts=texts,
        labels=labels[keep], label_names=label_names,
        splits=splits,
        image_ids=[Path(p).stem for p in rel], root=str(root),
        meta={"protocol": "hashing", "split": split, "seed": seed, "tag_vocabulary": vocab, "text_feature": "tags1k",
              "image_feature": feature_name, "release_rows": keep,
              "untagged_dropped": untagged_dropped,
              "concept_counts": {all_concepts[i]: int(counts[i]) for i in top}},
    )
