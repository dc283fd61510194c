"""docs/new-method.md followed as a newcomer does: a method of one's own in a file outside the
repository, loaded with ``--plugin`` / ``$XMODAL_PLUGINS`` by the installed ``xmodal`` command
(each step in a fresh process, as a user runs it), checked, benchmarked beside built-in
methods, compared, saved and loaded, with the mistakes a newcomer makes on the way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


from conftest import need

XMODAL = Path(sys.executable).with_name("xmodal")

# A small supervised-if-labelled method: both modalities regressed onto one target, the
# (row-normalised) labels when the data has them plus the joint principal components of the
# standardised pair (seeded randomised SVD).
PLUGIN = textwrap.dedent('''
    from typing import Any, ClassVar

    import numpy as np
    from sklearn.utils.extmath import randomized_svd

    from xmodal.methods import CrossModalMethod, register
    from xmodal.methods.base import interval


    @register(NAME)
    class LabelBridge(CrossModalMethod):
        """Label-anchored ridge bridge (after Rasiwasia et al., ACM MM 2010, semantic matching)."""

        uses_labels: ClassVar[bool] = True
        _parameter_rules: ClassVar[dict[str, Any]] = {
            "alpha": interval(0, None, closed="neither"), "mu": interval(0, None),
            "n_components": interval(1, None, integer=True),
            "random_state": [None, interval(0, None, integer=True)]}

        def __init__(self, alpha: float = 1.0, mu: float = 0.5, n_components: int = 16,
                     random_state: int | None = 0):
            self.alpha = alpha
            self.mu = mu
            self.n_components = n_components
            self.random_state = random_state

        def _fit(self, X, Y, L, *, train, val):
            self.x_mean_, self.x_std_ = X.mean(0), X.std(0) + 1e-8
            self.y_mean_, self.y_std_ = Y.mean(0), Y.std(0) + 1e-8
            Xs, Ys = (X - self.x_mean_) / self.x_std_, (Y - self.y_mean_) / self.y_std_
            Z = np.hstack([Xs / np.sqrt(Xs.shape[1]), Ys / np.sqrt(Ys.shape[1])])
            U = randomized_svd(Z, min(self.n_components, *Z.shape), random_state=self.random_state)[0]
            T = self.mu * U * np.sqrt(len(Z))
            if L is not None:
                T = np.hstack([L / np.maximum(np.linalg.norm(L, axis=1, keepdims=True), 1e-12), T])
            ridge = lambda A: np.linalg.solve(A.T @ A + self.alpha * len(A) * np.eye(A.shape[1]), A.T @ T)
            self.w_image_, self.w_text_ = ridge(Xs), ridge(Ys)

        def _encode_images(self, X):
            return ((X - self.x_mean_) / self.x_std_) @ self.w_image_

        def _encode_texts(self, Y):
            return ((Y - self.y_mean_) / self.y_std_) @ self.w_text_
''')


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XMODAL_PLUGINS"}
    env.update({"XMODAL_THREADS": "1", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                "COLUMNS": "250"}, **extra)
    return env


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=300)


def _plugin(folder: Path, name: str = "label_bridge", file: str = "label_bridge.py") -> Path:
    path = folder / file
    path.write_text(f"NAME = {name!r}\n" + PLUGIN)
    return path


def test_a_plugin_cannot_take_a_builtin_name(tmp_path):
    # Built-in families load on first use, so a plugin loaded first took "cca" unopposed: the
    # subspace family then failed to import ("registered twice"), taking kcca, pls, scm, sm,
    # mlcca and cfa with it, and `bench --methods cca` ran the plugin under CCA's name.
    _plugin(tmp_path, name="cca", file="clash.py")
    r = _run([str(XMODAL), "--plugin", "clash.py", "methods"], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "clash.py" in r.stderr and "'cca' registered twice" in r.stderr
    code = ("from xmodal import methods\n"
            "try:\n    methods.load_plugin('clash.py')\nexcept ImportError as e:\n    print('refused:', e)\n"
            "print(type(methods.create('cca')).__module__, type(methods.create('scm')).__name__)")
    r = _run([sys.executable, "-c", code], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "refused: plugin clash.py: ValueError: method name 'cca' registered twice" in r.stdout
    assert "xmodal.methods.subspace SemanticCorrelationMatching" in r.stdout


def test_a_plugin_named_as_a_module_beside_its_file_says_how_to_load_it(tmp_path):
    # The installed `xmodal` command does not import from the working directory (unlike
    # `python -m`): `--plugin label_bridge` beside label_bridge.py said only "No module named"
    _plugin(tmp_path)
    r = _run([str(XMODAL), "--plugin", "label_bridge", "methods"], tmp_path)
    assert r.returncode == 2
    assert "No module named 'label_bridge'" in r.stderr and "--plugin label_bridge.py" in r.stderr
    r = _run([str(XMODAL), "--plugin", "label_bridge.py", "methods"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "label_bridge" in r.stdout and "supervised (if labelled)" in r.stdout


def test_a_saved_plugin_method_without_its_plugin_says_to_load_it(tmp_path):
    plugin = _plugin(tmp_path)
    fit = ("from xmodal import methods\nfrom xmodal.methods.checks import toy_dataset\n"
           "methods.create('label_bridge').fit(toy_dataset().subset('train')).save('bridge.zip')")
    r = _run([sys.executable, "-c", fit], tmp_path, XMODAL_PLUGINS=str(plugin))
    assert r.returncode == 0, r.stderr
    r = _run([sys.executable, "-c", "from xmodal import methods; methods.load('bridge.zip')"], tmp_path)
    assert r.returncode == 1
    assert "unknown method 'label_bridge'" in r.stderr
    assert "--plugin" in r.stderr and "XMODAL_PLUGINS" in r.stderr
    r = _run([sys.executable, "-c", "from xmodal import methods; print(methods.load('bridge.zip'))"], tmp_path,
             XMODAL_PLUGINS=str(plugin))
    assert r.returncode == 0 and "LabelBridge(alpha=1.0" in r.stdout, r.stderr


def test_the_walkthrough_on_wikipedia(tmp_path):
    need("wikipedia")
    plugin = _plugin(tmp_path)
    check = ("from xmodal.methods import load_plugin\nload_plugin('label_bridge.py')\n"
             "from xmodal.methods.checks import check_method\nprint(check_method('label_bridge', min_map=0.6))")
    r = _run([sys.executable, "-c", check], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "fits without labels" in r.stdout and "class mAP >= 0.6" in r.stdout
    bench = [str(XMODAL), "--plugin", str(plugin), "bench", "--dataset", "wikipedia", "--quiet", "--per-query"]
    r = _run(bench + ["--methods", "label_bridge,cca", "--resume", "runs/wiki.jsonl"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = _run(bench + ["--methods", "label_bridge", "--set", "label_bridge.alpha=10",
                      "--resume", "runs/wiki.jsonl"], tmp_path)
    assert r.returncode == 0, r.stderr
    recs = {(x["method"], json.dumps(x["settings"])): x
            for x in map(json.loads, (tmp_path / "runs" / "wiki.jsonl").read_text().splitlines())}
    mine = recs[("label_bridge", "{}")]
    # recorded as the built-ins are: every parameter (the seed included), and its family
    assert mine["params"] == {"alpha": 1.0, "mu": 0.5, "n_components": 16, "random_state": 0}
    assert mine["kind"] == "supervised" and recs[("cca", "{}")]["kind"] == "unsupervised"
    assert recs[("label_bridge", '{"alpha": 10}')]["params"]["alpha"] == 10.0
    for d in ("i2t", "t2i"):  # the labels lift it clear of CCA on the classic features
        assert mine[d]["map"] > recs[("cca", "{}")][d]["map"] + 0.01
    # the bench's refusals hold for a plugin as for a built-in, before any fitting
    r = _run(bench + ["--methods", "label_bridge", "--set", "label_bridge.random_state=1"], tmp_path)
    assert r.returncode == 2 and "--seed" in r.stderr
    r = _run(bench + ["--methods", "label_bridge", "--set", "label_bridge.beta=1"], tmp_path)
    assert r.returncode == 2 and "alpha, mu, n_components, random_state" in r.stderr
    r = _run([str(XMODAL), "compare", "runs/wiki.jsonl", "label_bridge:alpha=10", "label_bridge:", "cca",
              "--resamples", "999"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "label_bridge:alpha=10 (A) vs label_bridge: (B)" in r.stdout and "Holm" in r.stdout


def test_a_plugin_file_importing_a_sibling_module_says_why_it_is_not_found(tmp_path):
    # a file loaded by path does not put its folder on sys.path (as `python file.py` does), so
    # `from label_bridge import LabelBridge` in a second plugin file failed with a bare
    # "No module named 'label_bridge'" though label_bridge.py sits beside it
    _plugin(tmp_path)
    (tmp_path / "label_hash.py").write_text("from label_bridge import LabelBridge\n")
    r = _run([str(XMODAL), "--plugin", "label_hash.py", "methods"], tmp_path)
    assert r.returncode == 2 and "No module named 'label_bridge'" in r.stderr
    code = ("from xmodal.methods import load_plugin\n"
            "try:\n    load_plugin('label_hash.py')\nexcept ImportError as e:\n    print(e)")
    r = _run([sys.executable, "-I", "-c", code], tmp_path)  # -I: no working folder on sys.path
    assert f"label_bridge is beside the plugin in {tmp_path}" in r.stdout and "PYTHONPATH" in r.stdout, r.stderr
    r = _run([str(XMODAL), "--plugin", "label_hash.py", "methods"], tmp_path, PYTHONPATH=str(tmp_path))
    assert r.returncode == 0, r.stderr


def test_loading_an_edited_plugin_file_again_in_one_process_takes_the_edit(tmp_path):
    # a notebook session: edit the method's file, load_plugin it again. The second call
    # returned at once (the module was already imported) and the old class stayed registered.
    from xmodal import methods

    plugin = _plugin(tmp_path, name="_walk_edited")
    methods.load_plugin(str(plugin))
    try:
        assert methods.create("_walk_edited").alpha == 1.0
        methods.load_plugin(str(plugin))  # unchanged: nothing is run again
        first = methods.get("_walk_edited")
        plugin.write_text(plugin.read_text().replace("alpha: float = 1.0", "alpha: float = 2.5"))
        methods.load_plugin(str(plugin))
        assert methods.create("_walk_edited").alpha == 2.5 and methods.get("_walk_edited") is not first
    finally:
        methods._REGISTRY.pop("_walk_edited", None)
