"""``xmodal index --set PARAM=VALUE``: the fitted method's parameters from the command line
(each test failed before the option existed)."""

import json

import pytest
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from conftest import ucm_caption_folder
from xmodal.cli import app
from xmodal.index import Collection


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    _, out, _, mp = ucm_caption_folder(tmp_path_factory, "cli-set", 300)  # 7 images, 35 captions
    with threadpool_limits(1):
        yield out
    mp.undo()


@pytest.fixture(scope="module")
def base(folder, tmp_path_factory):
    """A cca collection fitted with --set n_components=4."""
    path = tmp_path_factory.mktemp("set-base") / "a.xmc"
    r = run("index", folder, "-c", path, "--text-encoder", "tfidf", "--set", "n_components=4", "-q")
    assert r.exit_code == 0, r.output
    return path


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _words(r) -> str:
    return " ".join(r.output.split())


@pytest.fixture
def no_encoding(monkeypatch):
    """Fails the test if anything is encoded (or an encoder even built)."""
    import xmodal.index.build as build

    def boom(*a, **kw):
        raise AssertionError("encoded before the refusal")

    monkeypatch.setattr(build, "encode_items", boom)
    monkeypatch.setattr(build, "get_encoder", boom)


def test_set_bits_gives_codes_of_that_width(folder, tmp_path):
    path = tmp_path / "h.xmc"
    r = run("index", folder, "-c", path, "--method", "cmfh", "--set", "bits=128",
            "--text-encoder", "tfidf", "-q", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (out["output"], out["dim"], out["method"]) == ("binary", 128, "cmfh")
    with Collection.open(path, read_only=True) as coll:
        assert coll.method.bits == 128
        hits = coll.search_text("an airplane on the runway", 3, "image")
    assert len(hits) == 3
    # the same values on the existing collection: added to, nothing refused
    r = run("index", folder, "-c", path, "--method", "cmfh", "--set", "bits=128", "-q")
    assert r.exit_code == 0 and "binary 128-d" in r.output, r.output


def test_set_n_components_is_kept_and_left_out_of_the_search(tmp_path_factory, tmp_path, monkeypatch):
    import xmodal.evaluation.select as select

    _, folder, _, mp = ucm_caption_folder(tmp_path_factory, "cli-set-21", 100)  # 21 images: searched
    grids = []
    real = select.select_params

    def spy(name, grid, *a, **kw):
        grids.append(dict(grid))
        return real(name, grid, *a, **kw)

    monkeypatch.setattr(select, "select_params", spy)
    try:
        with threadpool_limits(1):
            r = run("index", folder, "-c", tmp_path / "c.xmc", "--method", "cca", "--set", "n_components=16",
                    "--text-encoder", "tfidf", "--json")
    finally:
        mp.undo()
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["dim"] == 16
    assert grids and all("n_components" not in g and "reg" in g for g in grids), grids
    assert "n_components=" not in r.stderr.split("chosen")[0].split(":")[-1]  # only reg was chosen
    with Collection.open(tmp_path / "c.xmc", read_only=True) as coll:
        assert coll.method.n_components == 16


@pytest.mark.parametrize("dry", [False, True])
def test_unknown_or_bad_parameters_are_refused_before_encoding(folder, tmp_path, no_encoding, dry):
    extra = ["--dry-run"] if dry else []
    path = tmp_path / "c.xmc"
    r = run("index", folder, "-c", path, "--method", "cmfh", "--set", "bitz=128", *extra)
    assert r.exit_code == 2, r.output
    out = _words(r)
    assert "cmfh" in out and "bitz" in out and "bits" in out and "n_anchors" in out, out
    r = run("index", folder, "-c", path, "--method", "cmfh", "--set", "bits=12", *extra)
    assert r.exit_code == 2 and "bits=12" in _words(r) and "multiple of 8" in _words(r), r.output
    r = run("index", folder, "-c", path, "--method", "cca", "--set", "n_components=-1", *extra)
    assert r.exit_code == 2 and "n_components=-1" in _words(r), r.output
    r = run("index", folder, "-c", path, "--set", "bits=64", *extra)  # the default method, cca
    assert r.exit_code == 2 and "cca" in _words(r) and "n_components" in _words(r), r.output
    r = run("index", folder, "-c", path, "--method", "cmfh", "--set", "cmfh.bits=64", *extra)
    assert r.exit_code == 2 and "--set bits=64" in _words(r), r.output  # bench's form: told the index form
    r = run("index", folder, "-c", path, "--set", "n_components", *extra)
    assert r.exit_code == 2 and "PARAM=VALUE" in _words(r), r.output
    assert not path.exists()


def test_set_refused_where_nothing_is_fitted(folder, base, tmp_path, no_encoding):
    with Collection.open(base, read_only=True) as coll:
        saved = coll.method.save(tmp_path / "m.zip")
    r = run("index", folder, "-c", tmp_path / "b.xmc", "--like", base, "--set", "n_components=4")
    assert r.exit_code == 2 and "--like" in _words(r) and "--set" in _words(r), r.output
    for extra in ([], ["--dry-run"]):
        r = run("index", folder, "-c", tmp_path / "b.xmc", "--method", saved, "--set", "n_components=4", *extra)
        assert r.exit_code == 2, r.output
        assert "--set" in _words(r) and str(saved) in _words(r) and "fitted" in _words(r), r.output
    assert not (tmp_path / "b.xmc").exists()


def test_set_on_an_existing_collection_must_match_its_method(folder, base, no_encoding):
    for extra in ([], ["--dry-run"]):
        r = run("index", folder, "-c", base, "--set", "n_components=8", *extra)
        assert r.exit_code == 2, r.output
        out = _words(r)
        assert "--set n_components=8 (it has n_components=4)" in out and "--rebuild" in out, out
        r = run("index", folder, "-c", base, "--set", "bits=8", *extra)  # its method, cca, has no bits
        assert r.exit_code == 2 and "cca" in _words(r) and "bits" in _words(r), r.output
    r = run("index", folder, "-c", base, "--set", "n_components=4", "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["action"] == "update"


def test_dry_run_says_the_parameters(folder, tmp_path, no_encoding):
    path = tmp_path / "c.xmc"
    r = run("index", folder, "-c", path, "--method", "cmfh", "--set", "bits=128", "--set", "lam=0.3",
            "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["action"] == "create" and plan["method"] == "cmfh" and plan["params"] == {"bits": 128, "lam": 0.3}
    r = run("index", folder, "-c", path, "--method", "cmfh", "--set", "bits=128", "--dry-run")
    assert r.exit_code == 0 and "fitting cmfh (bits=128)" in r.output, r.output
    assert not path.exists()


def test_build_collection_checks_method_params_before_encoding(folder, base, tmp_path, no_encoding):
    # build_collection(method_params=...) dropped an unknown name in silence (the method fitted
    # with its default), checked a bad value only after encoding, and ignored them beside a
    # fitted method file.
    from xmodal.index import CollectionError, build_collection
    from xmodal.methods import ParameterError

    with pytest.raises(ParameterError, match="unknown parameter bitz.*it takes bits"):
        build_collection(folder, tmp_path / "c.xmc", method="cmfh", method_params={"bitz": 64}, quiet=True)
    with pytest.raises(ParameterError, match="bits=12 must be a positive multiple of 8"):
        build_collection(folder, tmp_path / "c.xmc", method="cmfh", method_params={"bits": 12}, quiet=True)
    with Collection.open(base, read_only=True) as coll:
        saved = coll.method.save(tmp_path / "m.zip")
    with pytest.raises(CollectionError, match="a fitted method"):
        build_collection(folder, tmp_path / "c.xmc", method=saved, method_params={"n_components": 4}, quiet=True)
    assert not (tmp_path / "c.xmc").exists()
