"""Reading MATLAB files of either version: v5 through scipy, v7.3 (HDF5) through h5py.

MATLAB stores arrays column-major, so h5py sees a v7.3 variable with its axes reversed
(a 224x224x3xN image stack reads as N x 3 x 224 x 224). :class:`MatFile` undoes that for files
MATLAB wrote (they carry the ``MATLAB 7.3 MAT-file`` header) and leaves plain HDF5 files, which
Python code writes in C order, as they are. Shapes and arrays are always given in that "as the
writer meant" orientation; v7.3 variables can be read in slices, so a 3 GB image stack never has
to sit in memory at once. Sparse matrices (MATLAB keeps tag and bag-of-words matrices so) are
read as dense arrays in either version.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse

from .dataset import DataError

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _header(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(1024)


class MatFile:
    """The variables of one ``.mat`` (or plain HDF5) file, listed without loading them."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"{self.path}: file not found")
        head = _header(self.path)
        # HDF5 puts its signature at 0 or, after a user block (MATLAB's 512-byte header), at 512.
        self.hdf5 = head.startswith(_HDF5_SIGNATURE) or head[512:520] == _HDF5_SIGNATURE
        self.matlab_order = self.hdf5 and head.startswith(b"MATLAB")
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._v5_cache: dict[str, np.ndarray] = {}
        self._sparse: set[str] = set()  # v7.3 sparse matrices (HDF5 groups)
        try:
            if self.hdf5:
                import h5py

                with h5py.File(self.path, "r") as f:
                    for k, v in f.items():
                        if k.startswith("#"):
                            continue
                        if isinstance(v, h5py.Group) and "MATLAB_sparse" in v.attrs and "jc" in v:
                            # a sparse matrix: compressed columns, its row count an attribute
                            self.shapes[k] = (int(v.attrs["MATLAB_sparse"]), len(v["jc"]) - 1)
                            self._sparse.add(k)
                        elif isinstance(v, h5py.Dataset):
                            self.shapes[k] = tuple(reversed(v.shape)) if self.matlab_order else tuple(v.shape)
            else:
                for name, shape, _cls in scipy.io.whosmat(self.path):
                    self.shapes[name] = tuple(shape)
        except DataError:
            raise
        except Exception as exc:  # scipy/h5py raise many types for foreign or torn files
            raise DataError(f"{self.path}: cannot read MATLAB file ({exc})") from exc

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    @property
    def names(self) -> list[str]:
        return sorted(self.shapes)

    def _fail(self, name: str, exc: Exception) -> DataError:
        return DataError(f"{self.path}: cannot read variable {name} ({exc})")

    def read(self, name: str) -> np.ndarray:
        """The whole variable (cell arrays and strings as numpy object/str arrays)."""
        if not self.hdf5:
            if name not in self._v5_cache:
                try:
                    a = scipy.io.loadmat(self.path, variable_names=[name])[name]
                    # sparse (bag-of-words, tags): np.asarray would make it a 0-d object
                    self._v5_cache[name] = a.toarray() if scipy.sparse.issparse(a) else a
                except Exception as exc:
                    raise self._fail(name, exc) from exc
            return self._v5_cache[name]
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                v = f[name]
                if name in self._sparse:  # already in MATLAB's orientation
                    return _h5_sparse(v, self.shapes[name])
                a = np.asarray(v[()])
        except Exception as exc:
            raise self._fail(name, exc) from exc
        return a.T if self.matlab_order else a

    def struct(self, name: str) -> dict[str, np.ndarray] | None:
        """The numeric fields of the 1 x 1 struct ``name`` (DCMH's ``param``), flattened; None
        when the file holds no struct of that name."""
        if not self.hdf5:
            if name not in self.shapes:
                return None
            a = self.read(name)
            if not a.dtype.names or a.size != 1:
                return None
            rec = a.reshape(-1)[0]
            return {k: np.asarray(rec[k]).reshape(-1) for k in a.dtype.names
                    if np.asarray(rec[k]).dtype.kind in "biuf"}
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                g = f.get(name)
                if not isinstance(g, h5py.Group) or name in self._sparse:
                    return None
                return {k: np.asarray(v[()]).reshape(-1) for k, v in g.items()
                        if isinstance(v, h5py.Dataset) and v.dtype.kind in "biuf"}
        except Exception as exc:
            raise self._fail(name, exc) from exc

    def forget(self, name: str) -> None:
        """Drop a v5 variable kept in memory by :meth:`read`."""
        self._v5_cache.pop(name, None)

    def read_slice(self, name: str, axis: int, start: int, stop: int) -> np.ndarray:
        """``read(name)`` restricted to ``start:stop`` along ``axis`` (of the shape in
        :attr:`shapes`); HDF5 files are read only there."""
        ndim = len(self.shapes[name])
        index = [slice(None)] * ndim
        if not self.hdf5 or name in self._sparse:
            index[axis] = slice(start, stop)
            return self.read(name)[tuple(index)]
        import h5py

        raw_axis = ndim - 1 - axis if self.matlab_order else axis
        index[raw_axis] = slice(start, stop)
        try:
            with h5py.File(self.path, "r") as f:
                a = np.asarray(f[name][tuple(index)])
        except Exception as exc:
            raise self._fail(name, exc) from exc
        return a.T if self.matlab_order else a

    def read_strings(self, name: str) -> list[str]:
        """A list of strings stored as a cell array of strings or a char matrix (one per row)."""
        if not self.hdf5:
            a = self.read(name)
            if a.dtype.kind in "US":  # char matrix: one string per row
                rows = a.reshape(len(a), -1) if a.ndim > 1 else a
                return ["".join(r).strip() if a.ndim > 1 else str(r).strip() for r in rows]
            if a.dtype == object:
                try:
                    return [_cell_text(c) for c in a.reshape(-1, order="F")]
                except DataError as exc:
                    raise DataError(f"{self.path}: variable {name}: {exc}") from None
            raise DataError(f"{self.path}: variable {name} holds {a.dtype} values, not file names")
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                ds = f[name]
                if ds.dtype == h5py.ref_dtype:  # MATLAB cell: references to char arrays
                    refs = np.asarray(ds[()]).reshape(-1, order="C")
                    return [_chars(np.asarray(f[r][()])) for r in refs]
                a = np.asarray(ds[()])
        except DataError:
            raise
        except Exception as exc:
            raise self._fail(name, exc) from exc
        if a.dtype.kind in "ui":  # MATLAB char matrix, UTF-16 code units
            a = a.T if self.matlab_order else a
            return [_chars(row) for row in np.atleast_2d(a)]
        if a.dtype.kind in "SO":
            return [v.decode() if isinstance(v, bytes) else str(v) for v in a.reshape(-1)]
        raise DataError(f"{self.path}: variable {name} holds {a.dtype} values, not file names")

    def read_string_groups(self, name: str, n: int) -> list[list[str]]:
        """Per item, the strings of a variable holding one or several per item (captions): a
        cell array of strings or of cells of strings, a char matrix (one string a row), or a
        string array ``n`` x k (k an item). ``n``, the item count, says along which axis of a
        2-D array the items lie."""
        if not self.hdf5:
            a = self.read(name)
            if a.dtype.kind in "US" and a.ndim == 2:  # n x k strings (a 3-D char array)
                a = a if a.shape[0] == n or a.shape[1] != n else a.T
                return [[s.strip() for s in row if s.strip()] for row in a]
            if a.dtype != object or a.ndim != 2:
                return [[s] if s else [] for s in self.read_strings(name)]
            try:
                return [[t for c in row for t in _cell_texts(c)] for row in _item_rows(a, n)]
            except DataError as exc:
                raise DataError(f"{self.path}: variable {name}: {exc}") from None
        import h5py

        try:
            with h5py.File(self.path, "r") as f:
                ds = f[name]
                if ds.dtype != h5py.ref_dtype:
                    refs = None
                else:
                    refs = np.asarray(ds[()])
                    refs = refs.T if self.matlab_order else refs
                    return [[t for r in row for t in _h5_texts(f, f[r])] for row in _item_rows(refs, n)]
        except DataError:
            raise
        except Exception as exc:
            raise self._fail(name, exc) from exc
        return [[s] if s else [] for s in self.read_strings(name)]


def _chars(codes: np.ndarray) -> str:
    return "".join(chr(int(c)) for c in codes.reshape(-1) if int(c)).strip()


def _cell_text(cell) -> str:
    a = np.asarray(cell)
    if a.dtype.kind in "US":
        return "".join(a.reshape(-1)).strip()
    if a.dtype == object and a.size == 1:
        return _cell_text(a.reshape(-1)[0])
    raise DataError(f"cell holds {a.dtype} values, not a string")


def _h5_sparse(group, shape: tuple[int, ...]) -> np.ndarray:
    """A v7.3 sparse matrix (``data``, row indices ``ir``, column starts ``jc``), dense."""
    jc = np.asarray(group["jc"][()], dtype=np.int64)
    ir = np.asarray(group["ir"][()], dtype=np.int64) if "ir" in group else np.zeros(0, np.int64)
    data = np.asarray(group["data"][()]) if "data" in group else np.zeros(0)
    if data.dtype.names:  # complex values: (real, imag) pairs
        raise DataError(f"sparse matrix {group.name} holds complex values")
    return scipy.sparse.csc_matrix((data, ir, jc), shape=shape).toarray()


def _item_rows(a: np.ndarray, n: int) -> np.ndarray:
    """A 2-D cell array with one item per row (a 1 x n or n x 1 cell, or n x k)."""
    a = np.atleast_2d(a)
    return a if a.shape[0] == n or a.shape[1] != n else a.T


def _cell_texts(cell) -> list[str]:
    """The non-empty strings in a cell: a string, or a cell (nested) of strings."""
    a = np.asarray(cell)
    if a.dtype == object:
        return [t for c in a.reshape(-1, order="F") for t in _cell_texts(c)]
    if a.dtype.kind in "US":  # a char matrix: one string a row
        return [t for t in (str(s).strip() for s in a.reshape(-1)) if t]
    text = _cell_text(a) if a.size else ""
    return [text] if text else []


def _h5_texts(f, obj) -> list[str]:
    """The non-empty strings of a v7.3 cell entry: a char array, or a cell of them."""
    import h5py

    if obj.dtype == h5py.ref_dtype:
        return [t for r in np.asarray(obj[()]).reshape(-1) for t in _h5_texts(f, f[r])]
    if obj.attrs.get("MATLAB_empty", 0):  # MATLAB writes an empty value as its dimensions
        return []
    text = _chars(np.asarray(obj[()]))
    return [text] if text else []


def loadmat_any(path: str | Path) -> dict[str, np.ndarray]:
    """Every variable of a MATLAB v5 or v7.3 file (or a plain HDF5 file), whole."""
    m = MatFile(path)
    return {k: m.read(k) for k in m.names}
