"""Every command that prints a result takes ``--json`` (clip-retrieval / rclip habit: scripts
read the output, not the prose)."""

from __future__ import annotations

import json
import re

import numpy as np
import typer
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.index import Collection

#: commands that print no result to parse: serve runs a server
NO_RESULT = {"serve"}


def run(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def _leaves(group, prefix: str = "") -> dict:
    out = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group (typer carries its own click)
            out.update(_leaves(cmd, f"{prefix}{name} "))
        else:
            out[f"{prefix}{name}"] = cmd
    return out


def test_every_command_that_prints_a_result_takes_json():
    leaves = _leaves(typer.main.get_command(app))
    assert {"bench", "search", "keys list", "keys revoke"} <= set(leaves)
    lacking = sorted(name for name, cmd in leaves.items() if name not in NO_RESULT
                     and not any("--json" in p.opts for p in cmd.params))
    assert not lacking, f"commands without --json: {lacking}"


def test_keys_revoke_and_public_read_json(tmp_path):
    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    coll.add_vectors("text", ["a"], np.eye(1, 4, dtype=np.float32), texts=["a"])
    coll.close()
    c = tmp_path / "c.xmc"
    key_id = json.loads(run("keys", "add", "-c", c, "--role", "read", "--json").output)["key_id"]
    res = run("keys", "revoke", key_id, "-c", c, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"key_id": key_id, "revoked": True}
    res = run("keys", "public-read", "true", "-c", c, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {"public_read": True}
    # the plain output stays as it was
    assert run("keys", "public-read", "false", "-c", c).output.strip() == "public_read = False"


def _coll(tmp_path, name="c.xmc"):
    coll = Collection.create(tmp_path / name, dim=4)
    coll.add_vectors("text", ["a", "b"], np.eye(2, 4, dtype=np.float32), texts=["a", "b"])
    coll.close()
    return tmp_path / name


def test_export_and_snapshot_json(tmp_path):
    c = _coll(tmp_path)
    res = run("export", tmp_path / "v.npz", "-c", c, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["file"] == str(tmp_path / "v.npz") and out["images"] == 0 and out["texts"] == 2
    res = run("snapshot", tmp_path / "snap", "-c", c, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["snapshot"] == str(tmp_path / "snap") and out["texts"] == 2 and "space" in out


def test_keys_json(tmp_path):
    c = _coll(tmp_path)
    res = run("keys", "add", "-c", c, "--role", "read", "--name", "bot", "--json")
    assert res.exit_code == 0, res.output
    added = json.loads(res.output)
    assert added["role"] == "read" and added["name"] == "bot" and added["token"] and added["key_id"]
    res = run("keys", "list", "-c", c, "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["key_id"] for r in rows] == [added["key_id"]]
    assert rows[0]["role"] == "read" and rows[0]["revoked"] is False
    assert added["token"] not in res.output and not any("hash" in k or "token" in k for k in rows[0])


def test_index_json_says_what_the_run_did(tmp_path):
    import shutil

    from conftest import need

    imgs = sorted((need("ucm_captions") / "imgs").glob("*.jpg"))[:3]
    src = tmp_path / "photos"
    src.mkdir()
    for i, p in enumerate(imgs):
        shutil.copy(p, src / p.name)
        # words, not digits: tf-idf drops "0"/"1"/"2", and identical texts leave CCA nothing to fit
        (src / f"{p.stem}.txt").write_text(f"{['harbour', 'forest', 'river'][i]} seen from the air\n")
    args = ["index", src, "-c", tmp_path / "c.xmc", "--method", "cca", "--image-encoder",
            "efficientnet-lite0", "--text-encoder", "tfidf", "--quiet", "--json"]
    res = run(*args)
    assert res.exit_code == 0, res.output
    first = json.loads(res.output)
    assert first["run"] == {"added": 6, "replaced": 0, "moved": 0, "relabelled": 0, "unchanged": 0, "skipped": 0,
                            "removed": 0}
    again = json.loads(run(*args[:4], "--quiet", "--json").output)  # the collection's own options
    assert again["run"]["added"] == 0 and again["run"]["unchanged"] == 6
    (src / imgs[0].name).unlink()
    pruned = json.loads(run(*args[:4], "--quiet", "--json", "--prune").output)
    assert pruned["run"]["removed"] == 2 and pruned["images"] == 2
    human = run(*args[:4], "--quiet").output
    assert "this run: added 0, replaced 0, moved 0, relabelled 0, unchanged 4, skipped 0, removed 0" in human


def test_methods_name_describes_one_method_in_full():
    """`xmodal methods NAME`: the file it lives in, the paper, every parameter with its default
    and what it allows; --json the same as data; an unknown name exits 2 listing the methods."""
    import inspect
    from pathlib import Path

    from xmodal import methods

    res = run("methods", "acmr", "--json")
    assert res.exit_code == 0, res.output
    row = json.loads(res.output)
    assert row["module"] == "xmodal/methods/deep/supervised.py"
    assert row["class"] == "ACMR" and row["output"] == "real" and row["supervised"] is True
    assert "ACM MM 2017" in row["doc"] and row["doc"].startswith(row["summary"][:40])
    params = methods.create("acmr").get_params()
    assert list(row["params"]) == list(params)
    assert row["params"]["margin"] == {"default": params["margin"], "allows": "a number in [0, 2]"}
    assert row["params"]["hidden"]["default"] == list(params["hidden"])
    assert row["params"]["patience"]["allows"] == "None or an integer >= 1"
    text = run("methods", "acmr")
    assert text.exit_code == 0
    for pname in params:
        assert f"\n  {pname} " in text.output, pname
    assert "a number in [0, 2]" in text.output and "supervised.py" in text.output
    bad = run("methods", "acmx")
    assert bad.exit_code == 2 and "unknown method 'acmx'" in bad.output and "acmr" in bad.output
    # every method: its class is defined in the file named, and README's map of the package
    # ("where each method lives") puts it in that file
    src = Path(__file__).resolve().parents[1] / "src"
    readme = (src.parent / "README.md").read_text(encoding="utf-8")
    lives = {}
    for line in readme.split("where each method lives", 1)[1].splitlines()[1:]:
        m = re.fullmatch(r"\s+(\S+\.py)\s+([a-z_]+(?:, [a-z_]+)*)", line)
        if m is None:  # the map ends
            break
        for name in m.group(2).split(", "):
            lives[name] = "xmodal/methods/" + m.group(1)
    built_in = [n for n in methods.available() if methods.describe_method(n)["module"].startswith("xmodal/")]
    assert sorted(built_in) == sorted(lives), "README's map and the built-in methods differ"
    for name in built_in:  # (other tests register methods of their own, from tests/)
        info = methods.describe_method(name)
        assert f"class {info['class']}(" in (src / info["module"]).read_text(encoding="utf-8"), name
        assert lives.get(name) == info["module"], (name, lives.get(name), info["module"])
        assert set(info["params"]) == set(inspect.signature(methods.get(name).__init__).parameters) - {"self"}
        json.dumps(info, allow_nan=False)


def test_encoders_lists_every_encoder_family():
    """`xmodal encoders`: a row per family of available_encoders, --modality filters, --json is
    the same rows as data, another modality exits 2 naming the option."""
    from xmodal.encoders import available_encoders

    res = run("encoders")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert [ln.split()[0] for ln in lines] == [r["name"] for r in available_encoders()]
    assert any(ln.split()[:3] == ["tfidf", "text", "fitted"] for ln in lines)
    assert any(ln.split()[:3] == ["minilm", "text", "pretrained"] for ln in lines)
    rows = json.loads(run("encoders", "--modality", "image", "--json").output)
    assert rows == available_encoders("image") and {r["modality"] for r in rows} == {"image"}
    bad = run("encoders", "--modality", "audio")
    assert bad.exit_code == 2 and "--modality" in bad.output and "'audio'" in bad.output
