"""The DCMH .mat layout (IAll/YAll/LAll/FAll), MATLAB v5 and v7.3, one file or one per variable."""

import json

import h5py  # a core dependency (pyproject.toml): its absence is a failure, not a skip
import numpy as np
import pytest
import scipy.io
from PIL import Image
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.data import DataError, load_dataset, load_dcmh_mat, load_mirflickr25k, load_nus_wide
from xmodal.data import dcmh_mat
from xmodal.data._matio import MatFile
from xmodal.data.mirflickr import load_cnn_mat
from conftest import DATA, need, savemat73


def save(path, variables: dict, version: str) -> None:
    if version == "v73":
        savemat73(path, variables)
    else:
        scipy.io.savemat(path, {k: (np.array(v, dtype=object)[:, None] if isinstance(v, list) else v)
                                for k, v in variables.items()})


@pytest.fixture(scope="module")
def mirflickr():
    need("mirflickr25k")
    return load_mirflickr25k(str(DATA))


# ------------------------------------------------------------------ real MIRFlickr-25K tags/labels
@pytest.mark.parametrize("version,per_variable", [("v5", False), ("v73", False), ("v5", True), ("v73", True)])
def test_mirflickr_dcmh_layout_matches_cleaned_release(mirflickr, tmp_path, version, per_variable):
    ref = mirflickr
    Y = ref.text_features.astype(np.uint8)
    names = [p.split("/", 1)[1] for p in (DATA / "mirflickr25k" / "all_imgs.txt").read_text().split()]
    folder = tmp_path / "mirflickr25k"
    folder.mkdir()
    # 20015 names as a v7.3 cell take h5py ~15 s each way (v7.3 FAll is covered on small files),
    # as a v5 cell ~4 s: one variant carries them, like DCMH's separate -fall.mat.
    names = names if (version, per_variable) == ("v5", True) else None
    if per_variable:
        # Items in columns for YAll: the layout is found from the lengths, not assumed.
        save(folder / "mirflickr25k-yall.mat", {"YAll": Y.T.copy()}, version)
        save(folder / "mirflickr25k-lall.mat", {"LAll": ref.labels}, version)
        if names:
            save(folder / "mirflickr25k-fall.mat", {"FAll": names}, version)
        ds = load_dataset(str(folder))
    else:
        save(folder / "FLICKR-25K.mat", {"YAll": Y, "LAll": ref.labels, **({"FAll": names} if names else {})}, version)
        ds = load_dataset(str(folder / "FLICKR-25K.mat"))
    assert ds.meta["dataset"] == "mirflickr25k" and ds.meta["protocol"] == "hashing"
    np.testing.assert_array_equal(ds.text_features, ref.text_features)
    np.testing.assert_array_equal(ds.labels, ref.labels)
    assert ds.label_names == ref.label_names
    assert set(ds.splits) == set(ref.splits)
    for k in ref.splits:  # DCMH's sizes (2000 / 10000) and the same seeded draw
        np.testing.assert_array_equal(ds.splits[k], ref.splits[k], err_msg=k)
    if names:
        assert ds.image_ids[:2] == ["im1", "im2"] and ds.meta["file_names"][0] == "im1.jpg"
    if per_variable:
        # The named loader falls back to the DCMH files when the cleaned layout is absent.
        named = load_mirflickr25k(str(tmp_path), seed=3)
        again = load_mirflickr25k(str(DATA), seed=3)
        assert named.name == "mirflickr25k"
        np.testing.assert_array_equal(named.splits["train"], again.splits["train"])
        same = load_dataset("mirflickr25k", data_dir=str(folder), n_query=100, n_train=500)
        assert len(same.splits["query"]) == 100 and len(same.splits["train"]) == 500


def test_split_sizes_are_checked(mirflickr):
    # A negative size used to reach numpy ("a cannot be empty unless no samples are taken").
    for kw, needle in (({"n_query": -1}, "n_query must be a positive integer, got -1"),
                       ({"n_train": 0}, "n_train must be a positive integer, got 0"),
                       ({"n_query": 10000, "n_train": 10016}, "n_query \\+ n_train = 20016 exceeds 20015 items")):
        with pytest.raises(DataError, match="mirflickr25k: " + needle):
            load_mirflickr25k(str(DATA), **kw)


# ------------------------------------------------------------------------- raw pixels to PNG
def _pixel_data(n=5, h=32, w=24, c=3, seed=0):
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)  # N x H x W x C
    Y = rng.random((n, 7))
    L = rng.integers(0, 2, size=(n, 4)).astype(np.uint8)
    return imgs, Y, L


@pytest.mark.parametrize("version", ["v5", "v73"])
@pytest.mark.parametrize("order", ["matlab", "items_first", "channels_first_gray"])
def test_raw_pixels_round_trip_to_png(tmp_path, monkeypatch, version, order):
    imgs, Y, L = _pixel_data(c=1 if order == "channels_first_gray" else 3)
    if order == "matlab":
        stored = np.ascontiguousarray(imgs.transpose(1, 2, 3, 0))  # H x W x C x N, as DCMH's IAll
    elif order == "items_first":
        stored = imgs
    else:
        stored = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))  # N x C x H x W
    path = tmp_path / "data.mat"
    names = [f"sub\\img_{i}.jpg" for i in range(5)]  # FAll, as Windows paths
    save(path, {"IAll": stored, "YAll": Y, "LAll": L, "FAll": names}, version)
    if version == "v73":  # the pixel stack is read in slices, never whole
        real_read = MatFile.read

        def read(self, name):
            assert not (self.hdf5 and name == "IAll"), "whole IAll read"
            return real_read(self, name)

        monkeypatch.setattr(MatFile, "read", read)
    out = tmp_path / "png"
    ds = load_dcmh_mat(path, images_dir=out, n_query=1, n_train=2, progress=False)
    assert ds.image_features is None and len(ds.image_paths) == 5
    assert ds.image_ids == [f"img_{i}" for i in range(5)] and ds.meta["file_names"][1] == "sub/img_1.jpg"
    for i, p in enumerate(ds.image_paths):
        got = np.asarray(Image.open(p))
        want = imgs[i][..., 0] if imgs.shape[-1] == 1 else imgs[i]
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(ds.text_features, Y.astype(np.float32))
    # A rerun keeps the files; a lost one is written again, alone.
    stamps = {p: (tmp_path / p).stat().st_mtime_ns for p in ds.image_paths}
    (out / "000003.png").unlink()
    again = load_dcmh_mat(path, images_dir=out, n_query=1, n_train=2, progress=False)
    assert again.image_paths == ds.image_paths
    for p in ds.image_paths:
        if not p.endswith("000003.png"):
            assert (tmp_path / p).stat().st_mtime_ns == stamps[p]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "000003.png")).reshape(imgs[3].shape), imgs[3])
    assert not list(out.glob("*.tmp"))


def test_pixels_default_folder_chunks_and_features_preferred(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    imgs, Y, L = _pixel_data(n=7)
    path = tmp_path / "nus-wide-tc10-iall.mat"
    savemat73(path, {"IAll": imgs.transpose(1, 2, 3, 0), "YAll": Y, "LAll": L})
    ds = load_dcmh_mat(path, n_query=1, n_train=2, progress=False)
    folder = tmp_path / "cache" / "dcmh-images"
    assert ds.meta["images_dir"].startswith(str(folder)) and len(list(folder.glob("*/*.png"))) == 7
    # the PNGs feed xmodal's image encoders like any image files
    from xmodal.encoders import encode_dataset

    enc = encode_dataset(ds, "efficientnet-lite0", None, cache_dir=tmp_path / "feat", quiet=True)
    assert enc.image_features.shape == (7, 1280) and not enc.meta["encoding"]["skipped"]
    assert np.isfinite(enc.image_features).all() and enc.splits["train"].tolist() == ds.splits["train"].tolist()
    # chunks that split the stack: every image still lands in its own file
    m = MatFile(path)
    paths = dcmh_mat.materialize_images(m, "IAll", 7, tmp_path / "chunked", progress=False, chunk=3)
    for i, p in enumerate(paths):
        np.testing.assert_array_equal(np.asarray(Image.open(p)), imgs[i])
    # precomputed features beside the pixels (UCCH's XAll) are used directly
    X = np.random.default_rng(1).random((7, 16))
    scipy.io.savemat(tmp_path / "nus-wide-tc10-xall-vgg.mat", {"XAll": X})
    both = tmp_path / "both"
    both.mkdir()
    for f in ("nus-wide-tc10-iall.mat", "nus-wide-tc10-xall-vgg.mat"):
        (both / f).write_bytes((tmp_path / f).read_bytes())
    fd = load_dcmh_mat(both, n_query=1, n_train=2, progress=False)
    assert fd.meta["image_var"] == "XAll" and fd.image_paths is None
    np.testing.assert_allclose(fd.image_features, X.astype(np.float32))
    assert fd.meta["dataset"] == "nus_wide"


def test_nus_wide_named_loader_finds_per_variable_files(tmp_path):
    rng = np.random.default_rng(2)
    n = 60
    root = tmp_path / "nus_wide"
    (root / "IAll").mkdir(parents=True)
    L = rng.integers(0, 2, size=(n, 10)).astype(np.uint8)
    Y = rng.integers(0, 2, size=(n, 30)).astype(np.uint8)
    savemat73(root / "nus-wide-tc10-yall.mat", {"YAll": Y})  # DJSRH reads this one with h5py
    scipy.io.savemat(root / "nus-wide-tc10-lall.mat", {"LAll": L})
    scipy.io.savemat(root / "IAll" / "nus-wide-tc10-iall.mat", {"IAll": rng.random((n, 12))})
    ds = load_nus_wide(str(tmp_path), n_query=6, n_train=20, seed=4)
    assert ds.name == "nus_wide" and ds.meta["dataset"] == "nus_wide" and ds.image_features.shape == (n, 12)
    np.testing.assert_array_equal(ds.text_features, Y)
    assert len(ds.splits["query"]) == 6 and len(ds.splits["train"]) == 20
    with pytest.raises(DataError, match=r"exceeds 60 items"):
        load_nus_wide(str(tmp_path))  # the papers' 2100 + 10500 do not fit
    with pytest.raises(DataError, match=r"concepts.*do not apply"):
        load_nus_wide(str(tmp_path), concepts=["sky"], n_query=6, n_train=20)


# ------------------------------------------------------------------------------- bad inputs
def _good(n=8):
    rng = np.random.default_rng(3)
    return {"IAll": rng.random((n, 5)), "YAll": rng.random((n, 6)),
            "LAll": rng.integers(0, 2, size=(n, 3)).astype(np.uint8)}


@pytest.mark.parametrize("version", ["v5", "v73"])
@pytest.mark.parametrize("change,needle", [
    (lambda v: v.pop("LAll"), r"x.mat: variable LAll not found"),
    (lambda v: v.update(YAll=v["YAll"][:7]), r"x.mat: YAll has shape \(7, 6\) but .*x.mat: LAll has shape \(8, 3\)"),
    (lambda v: v.update(IAll=v["IAll"][:6]), r"x.mat: IAll has shape \(6, 5\), but YAll and LAll hold 8 items"),
    (lambda v: v["LAll"].__setitem__((4, 1), 2), r"x.mat: LAll item 4 \(0-based\), column 1 holds 2"),
    (lambda v: v["YAll"].__setitem__((5, 2), np.nan), r"x.mat: YAll item 5 \(0-based\) holds NaN"),
    (lambda v: v["IAll"].__setitem__((2, 0), np.inf), r"x.mat: IAll item 2 \(0-based\) holds NaN or inf"),
    (lambda v: v.update(IAll=np.zeros((4, 4, 5, 8), dtype=np.uint8)), r"x.mat: IAll has shape \(4, 4, 5, 8\); pixel arrays"),
    (lambda v: v.update(IAll=np.full((4, 4, 3, 8), 300.0)), r"x.mat: IAll holds float64 pixel values"),
])
def test_bad_inputs_name_file_and_variable(tmp_path, version, change, needle):
    v = _good()
    change(v)
    save(tmp_path / "x.mat", v, version)
    with pytest.raises(DataError, match=needle):
        load_dcmh_mat(tmp_path / "x.mat", n_query=2, n_train=3, images_dir=tmp_path / "png", progress=False)


def test_folder_errors_and_dispatch(tmp_path):
    v = _good()
    scipy.io.savemat(tmp_path / "a-yall.mat", {"YAll": v["YAll"]})
    with pytest.raises(DataError, match=r"no .mat file in the folder holds variable LAll.*YAll in a-yall.mat"):
        load_dataset(str(tmp_path))
    with pytest.raises(DataError, match=r"a-yall.mat: variable LAll not found .*pass their folder"):
        load_dataset(str(tmp_path / "a-yall.mat"))
    scipy.io.savemat(tmp_path / "a-lall.mat", {"LAll": v["LAll"]})
    scipy.io.savemat(tmp_path / "b-lall.mat", {"LAll": v["LAll"]})
    with pytest.raises(DataError, match=r"b-lall.mat: variable LAll is also in .*a-lall.mat"):
        load_dataset(str(tmp_path))
    (tmp_path / "b-lall.mat").unlink()
    ds = load_dataset(str(tmp_path), n_query=2, n_train=3)
    assert ds.image_features is None and ds.n_images == 8 and ds.meta["dataset"] is None
    (tmp_path / "torn.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 10)
    with pytest.raises(DataError, match=r"torn.mat: cannot read MATLAB file"):
        load_dataset(str(tmp_path))
    scipy.io.savemat(tmp_path / "other.mat", {"Q": np.zeros((2, 2))})
    with pytest.raises(DataError, match=r"other.mat: not a known .mat layout.*found \['Q'\]"):
        load_dataset(str(tmp_path / "other.mat"))


def test_plain_hdf5_cnn_mat_is_not_transposed(tmp_path):
    # Python writes HDF5 in C order (UCCH's MSCOCO .h5py): no MATLAB header, nothing to undo.
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "coco_cnn.mat", "w") as f:
        for part, n in (("tr", 12), ("te", 4)):
            f[f"I_{part}"], f[f"T_{part}"] = rng.random((n, 6)), rng.random((n, 3))
            f[f"L_{part}"] = rng.integers(0, 2, (n, 2))
        I_te = f["I_te"][()]
    ds = load_cnn_mat(tmp_path / "coco_cnn.mat")
    np.testing.assert_allclose(ds.subset("query").image_features, I_te.astype(np.float32))
    savemat73(tmp_path / "m_cnn.mat", {"I_tr": I_te, "T_tr": I_te[:, :2], "L_tr": np.eye(4, 2),
                                       "I_te": I_te, "T_te": I_te[:, :2], "L_te": np.eye(4, 2)})
    np.testing.assert_allclose(load_dataset(str(tmp_path / "m_cnn.mat")).image_features[:4], I_te.astype(np.float32))


# ------------------------------------------------------------------------------ xmodal bench
def test_bench_cli_on_a_dcmh_mat_file(tmp_path):
    rng = np.random.default_rng(5)
    n = 400
    L = (rng.random((n, 6)) < 0.25).astype(np.uint8)
    L[np.arange(n), rng.integers(0, 6, n)] = 1
    X = L @ rng.normal(size=(6, 40)) + 0.5 * rng.normal(size=(n, 40))
    Y = ((L @ rng.normal(size=(6, 60)) + 0.5 * rng.normal(size=(n, 60))) > 0.8).astype(np.uint8)
    path = tmp_path / "TOY-DCMH.mat"
    savemat73(path, {"IAll": X, "YAll": Y, "LAll": L})
    out = tmp_path / "runs.json"
    res = CliRunner().invoke(app, ["bench", "--dataset", str(path), "--methods", "cca_itq,scm_seq",
                                   "--bits", "16,32", "--quiet", "--json", str(out)])
    assert res.exit_code == 0, res.output
    recs = json.loads(out.read_text())
    assert [(r["method"], r["bits"]) for r in recs] == [("cca_itq", 16), ("cca_itq", 32),
                                                        ("scm_seq", 16), ("scm_seq", 32)]
    density = (L[:, None, :] & L[None, :, :]).any(-1).mean()  # chance MAP: share of relevant pairs
    for r in recs:
        assert r["dataset"] == "TOY-DCMH"
        assert r["i2t"]["map"] > density + 0.1 and r["t2i"]["map"] > density + 0.1


def test_min_tag_count_is_refused_beside_mat_files_in_a_subfolder_too(tmp_path):
    from scipy.io import savemat

    from xmodal.data import DataError
    from xmodal.data.mirflickr import load_mirflickr25k

    rng = np.random.default_rng(0)
    (tmp_path / "mirflickr").mkdir()  # a folder of images, not the release (no meta/tags)
    blocks = {f"{v}_{p}": rng.standard_normal((6, 3)) if v != "L" else (rng.random((6, 2)) > .5) * 1.0
              for v in "ITL" for p in ("tr", "te")}
    savemat(tmp_path / "mirflickr" / "mir_cnn.mat", blocks)
    with pytest.raises(DataError, match=r"min_tag_count applies to the full release .*the \.mat files in"):
        load_mirflickr25k(str(tmp_path), min_tag_count=20)
