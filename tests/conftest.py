from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

# Typer's error boxes wrap at the terminal width (80 without one): a long tmp path would be
# split mid-message and substring checks on the CLI's output would fail by machine.
os.environ["COLUMNS"] = "250"

DATA = Path(os.environ.get("XMODAL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def need(name: str) -> Path:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"reference data {path} not present")
    return path


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.exists():
        pytest.skip(f"reference data {DATA} not present")
    return DATA


@pytest.fixture(scope="session")
def wikipedia():
    need("wikipedia")
    from xmodal.data import load_wikipedia

    return load_wikipedia(str(DATA))


@pytest.fixture(scope="session")
def ucm():
    need("ucm_captions")
    from xmodal.data import load_ucm_captions

    return load_ucm_captions(str(DATA))


def ucm_caption_folder(tmp_path_factory, name: str, step: int):
    """Every ``step``-th UCM-Captions image copied into a fresh folder, its captions beside it as
    a sidecar ``.txt``; the feature cache points into the session's temp dir.

    Returns ``(root, folder, captions by file name, monkeypatch)``; undo the monkeypatch when done.
    """
    import shutil

    from xmodal.data import load_ucm_captions

    # skip only when the folder is absent: a DataError on data that is there is a failure
    ds = load_ucm_captions(str(need("ucm_captions").parent))
    mp = pytest.MonkeyPatch()
    mp.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "xmodal-cache"))
    import scipy.linalg  # noqa: F401  (import before torch; see test_collection.py)
    import torch  # noqa: F401
    root = tmp_path_factory.mktemp(name)
    folder = root / "imgs"
    folder.mkdir()
    captions = {}
    for i in range(0, ds.n_images, step):
        src = Path(ds.image_paths[i])
        shutil.copy(src, folder / src.name)
        captions[src.name] = [t for t, j in zip(ds.texts, ds.text_to_image) if j == i]
        (folder / (src.stem + ".txt")).write_text("\n".join(captions[src.name]))
    return root, folder, captions, mp


def wiki_sample(n_train: int, seed: int = 0, n_test: int | None = None):
    """``(train, test)`` of the Wikipedia release's features: ``n_train`` training pairs drawn
    with ``seed`` (kept in order), the test split or its first ``n_test`` pairs. Skips when the
    data folder is absent."""
    import numpy as np

    from xmodal.data import load_dataset

    need("wikipedia")
    ds = load_dataset("wikipedia", data_dir=str(DATA), with_texts=False)
    rng = np.random.default_rng(seed)
    train = ds.subset(np.sort(rng.choice(ds.splits["train"], n_train, replace=False)))
    test = ds.subset("test")
    return train, test if n_test is None else test.subset(np.arange(n_test))


def dcmh_toy(n: int = 600, n_query: int = 100, n_train: int = 300):
    """A multi-label DCMH-protocol dataset (queries, a database larger than the training split),
    features a noisy linear function of the labels: for hashing protocol tests, no fitting cost."""
    import numpy as np

    from xmodal.data.dataset import PairedDataset
    from xmodal.data.mirflickr import hashing_splits

    rng = np.random.default_rng(0)
    L = 5
    lab = (rng.random((n, L)) < 0.3).astype(np.uint8)
    lab[np.arange(n), rng.integers(0, L, n)] = 1
    X = lab @ rng.standard_normal((L, 20)) + rng.standard_normal((n, 20))
    Y = lab @ rng.standard_normal((L, 15)) + rng.standard_normal((n, 15))
    return PairedDataset(name="dcmh_toy", text_to_image=np.arange(n), n_images=n,
                         image_features=X.astype(np.float32), text_features=Y.astype(np.float32),
                         labels=lab, splits=hashing_splits(n, n_query, n_train, 0))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def canned_server(routes: dict, seen: list | None = None, keep_alive: bool = False):
    """A stand-in HTTP server on 127.0.0.1: ``routes[(method, path)]`` or ``routes[path]`` =
    ``(status, headers, body)``; each request's ``(client port, lower-cased headers)`` is
    appended to ``seen``. ``keep_alive`` answers HTTP/1.1 (connections kept between calls)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if keep_alive else "HTTP/1.0"

        def _answer(self):
            if seen is not None:
                seen.append((self.client_address[1], {k.lower(): v for k, v in self.headers.items()}))
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            missing = (404, {}, b'{"detail": "Not Found"}')
            status, headers, body = routes.get((self.command, self.path), routes.get(self.path, missing))
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@contextmanager
def serving(app):
    """``app`` served by uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    import threading
    import time

    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        th.join(10)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Search-engine tests: a shared feature cache, one BLAS/OpenMP thread."""
    from threadpoolctl import threadpool_limits

    mp = pytest.MonkeyPatch()
    # One feature cache for every search-engine test module in the session.
    mp.setenv("XMODAL_CACHE", str(tmp_path_factory.getbasetemp() / "xmodal-cache"))
    # Multi-threaded BLAS next to torch's OpenMP pool makes CCA's eigh 10-20x slower on a
    # 2-core machine; load every pool first so the limit reaches them all.
    import scipy.linalg  # noqa: F401
    import torch  # noqa: F401
    with threadpool_limits(1):
        yield
    mp.undo()


# ------------------------------------------------------------------ the web page's browser
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def need_browser() -> None:
    """Skip unless Debian's chromium and Playwright are installed (.ci/run installs both)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); .ci/run installs it")
    pytest.importorskip("playwright.sync_api", reason="playwright not installed in .venv")


@contextmanager
def served_ucm_collection(tmp_path_factory, name: str, step: int = 150):
    """A UCM-Captions caption folder (every ``step``-th image) indexed with efficientnet-lite0
    and tfidf and served on 127.0.0.1: ``{"url", "folder", "captions", "coll", "root"}``."""
    from threadpoolctl import threadpool_limits

    from xmodal.index import build_collection
    from xmodal.service import create_app

    root, folder, captions, mp = ucm_caption_folder(tmp_path_factory, name, step)
    try:
        with threadpool_limits(1):  # see test_collection.py
            coll = build_collection(folder, root / "coll", image_encoder="efficientnet-lite0",
                                    text_encoder="tfidf", quiet=True)
            try:
                with serving(create_app(coll)) as url:
                    yield {"url": url, "folder": folder, "captions": captions, "coll": coll, "root": root}
            finally:
                coll.close()
    finally:
        mp.undo()


@pytest.fixture
def page(browser):
    """A page of the module's browser. Playwright's wait_for_function evaluates its string,
    which the page's CSP (no eval) refuses: pages here skip the CSP (test_browser.py's
    test_the_page_works_under_its_own_csp keeps it). A script error on the page fails the test."""
    pg = browser.new_page(bypass_csp=True)
    pg.set_default_timeout(15000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    pg.close()
    assert not errors, errors


def status(page) -> str:
    """The web page's status line."""
    return page.locator("#status").inner_text()


def wait_status(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#status').textContent.includes(t)", arg=text)


@pytest.fixture(scope="module")
def browser(server):
    """Headless chromium for a module's ``server`` fixture (started first: it skips cleanly)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def labelled_photos(root: Path, n: int = 3) -> Path:
    """``n`` small images in two label sub-folders, each with a one-line sidecar caption."""
    src = root / "photos"
    for i in range(n):
        label = "beach" if i % 2 else "forest"
        (src / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40 * i, 90, 200 - 30 * i)).save(src / label / f"p{i}.png")
        (src / label / f"p{i}.txt").write_text(f"a {label} photo number {i}\n")
    return src


def fake_image_files(tmp_path: Path, n: int) -> list[str]:
    """``n`` files named like images whose bytes differ (collections hash what they store)."""
    out = []
    for j in range(n):
        f = tmp_path / f"f{j}.jpg"
        f.write_bytes(b"image %d" % j)
        out.append(str(f))
    return out


def collection_state(c) -> tuple:
    """What a failed write must leave as it was: the generation, the count and every key."""
    return c.store.generation(), c.count(), sorted(r[0] for r in c.store.query("SELECT key FROM items"))


def vector_collection(path: Path, src: Path):
    """A collection of random 4-d vectors for the images of folder ``src`` (no encoder)."""
    import numpy as np
    from xmodal.index import Collection
    from xmodal.index.build import scan_folder

    coll = Collection.create(path, dim=4)
    images, _ = scan_folder(src)
    rng = np.random.default_rng(0)
    coll.add_items(images, image_features=rng.normal(size=(len(images), 4)))
    return coll


def clean_exit(res, code: int = 2) -> None:
    """A CLI run (typer's CliRunner result) that exited with ``code`` through the CLI's own
    error path: no exception escaped and no traceback was printed."""
    assert res.exit_code == code, (res.output, res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output


def karpathy_file(tmp_path: Path) -> Path:
    """A six-image Karpathy-format ``dataset_coco.json`` (three test, three train images)."""
    import json

    doc = {"dataset": "coco", "images": [
        {"filename": f"{i}.jpg", "cocoid": i, "split": "test" if i < 3 else "train",
         "sentences": [{"raw": f"a photo number {i}"}]} for i in range(6)]}
    path = tmp_path / "dataset_coco.json"
    path.write_text(json.dumps(doc))
    return path


def a_file(tmp_path: Path) -> Path:
    """A plain file, for paths that must be refused for lying under a file or being one."""
    f = tmp_path / "afile"
    f.write_text("x")
    return f


def beach_images_plain_texts(path: Path):
    """Images labelled beach / forest, captions added without labels: a vectors-only collection."""
    import numpy as np
    from xmodal.index import Collection

    c = Collection.create(path, dim=4)
    c.add_vectors("image", ["b.jpg", "f.jpg"], np.eye(2, 4, dtype=np.float32), labels=[["beach"], ["forest"]])
    c.add_vectors("text", ["t1", "t2"], np.eye(2, 4, dtype=np.float32), texts=["sand", "trees"])
    return c


def savemat73(path, variables: dict) -> None:
    """A MATLAB v7.3 file as MATLAB writes it: HDF5 behind a 512-byte ``MATLAB 7.3 MAT-file``
    header, arrays column-major (h5py sees their axes reversed) with a ``MATLAB_class``
    attribute. A list is an N x 1 cell whose entries are strings (1 x L UTF-16 char arrays,
    stored as object references) or lists of strings (1 x k cells); a scipy sparse matrix is
    MATLAB's group of compressed columns (``data`` / ``ir`` / ``jc``, row count in
    ``MATLAB_sparse``)."""
    import h5py
    import numpy as np
    import scipy.sparse as sp

    with h5py.File(path, "w", userblock_size=512) as f:
        count = iter(range(10 ** 6))

        def ref(value):
            if isinstance(value, str):
                d = f.create_dataset(f"#refs#/s{next(count)}",
                                     data=np.array([[ord(c) for c in value]], np.uint16).T)
                d.attrs["MATLAB_class"] = np.bytes_("char")
            else:
                d = f.create_dataset(f"#refs#/c{next(count)}",
                                     data=np.array([[ref(v) for v in value]], dtype=h5py.ref_dtype).T)
                d.attrs["MATLAB_class"] = np.bytes_("cell")
            return d.ref

        for name, value in variables.items():
            if isinstance(value, list):
                d = f.create_dataset(name, data=np.array([[ref(v) for v in value]], dtype=h5py.ref_dtype))
                d.attrs["MATLAB_class"] = np.bytes_("cell")
            elif sp.issparse(value):
                m = sp.csc_matrix(value)
                g = f.create_group(name)
                g.attrs["MATLAB_class"] = np.bytes_("double")
                g.attrs["MATLAB_sparse"] = np.uint64(m.shape[0])
                g.create_dataset("data", data=m.data.astype(np.float64))
                g.create_dataset("ir", data=m.indices.astype(np.uint64))
                g.create_dataset("jc", data=m.indptr.astype(np.uint64))
            else:
                value = np.asarray(value)
                d = f.create_dataset(name, data=value.T)
                d.attrs["MATLAB_class"] = np.bytes_("uint8" if value.dtype == np.uint8 else "double")
    with open(path, "r+b") as fh:
        fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64 HDF5 schema 1.00 .".ljust(116, b" ")
                 + b"\0" * 8 + b"\x00\x02IM")
