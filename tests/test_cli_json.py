"""Every command that prints a result takes ``--json`` (clip-retrieval / rclip habit: scripts
read the output, not the prose)."""

from __future__ import annotations

import json

import numpy as np
import typer
from typer.testing import CliRunner

from xmodal.cli import app
from xmodal.index import Collection

#: commands that print no result to parse: serve runs a server
NO_RESULT = {"serve"}


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


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
