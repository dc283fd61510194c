"""docs/datasets.md and docs/bench.md keep up with the code: every named dataset is in the
datasets table, every option of every loader that `load_dataset` reaches is in that loader's
row of the options table, and every option of `xmodal bench` / `xmodal compare` is in the
bench guide's tables (an option added and not documented fails here)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import xmodal.data as data

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "datasets.md").read_text(encoding="utf-8")

# Every function load_dataset dispatches to (by name, by file suffix, or by folder layout).
REACHED = [*data.LOADERS.values(), data.load_karpathy, data.load_coco, data.load_flickr,
           data.load_cleaned_folder, data.load_cnn_mat, data.load_dcmh_mat,
           data.load_index_caption_mat, data.load_pairs, data.load_npz]
# The first parameter is the data itself (a folder or file), not an option.
WHERE = {"data_dir", "path", "folder"}


def _options_rows() -> dict[str, str]:
    section = DOC.split("## Loader options", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(load_\w+)` [^|]*\|(.*)\|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_every_named_dataset_is_in_the_table():
    table = DOC.split("## How a path is read", 1)[0]
    for name in data.LOADERS:
        assert f"`{name}`" in table, name


@pytest.mark.parametrize("loader", sorted({f.__name__: f for f in REACHED}.values(),
                                          key=lambda f: f.__name__), ids=lambda f: f.__name__)
def test_every_loader_option_is_documented(loader):
    rows = _options_rows()
    assert loader.__name__ in rows, f"docs/datasets.md has no options row for {loader.__name__}"
    options = [p for p in inspect.signature(loader).parameters if p not in WHERE]
    missing = [p for p in options if f"`{p}`" not in rows[loader.__name__]]
    assert not missing, f"{loader.__name__}: options not in docs/datasets.md: {missing}"
    if not options:
        assert "none" in rows[loader.__name__]


def test_the_readme_points_to_the_datasets_guide():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/datasets.md" in readme
    # every section the table links to exists (GitHub's anchors: lower case, spaces to dashes)
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-")
               for h in re.findall(r"^## (.+)$", DOC, flags=re.M)}
    for link in re.findall(r"\]\(#([\w\-]+)\)", DOC):
        assert link in anchors, link


@pytest.mark.parametrize("command", ["bench", "compare"])
def test_every_bench_and_compare_option_is_in_docs_bench(command):
    """docs/bench.md's option tables name every option of `xmodal bench` and `xmodal compare`."""
    import typer.main

    from xmodal.cli import app

    doc = (ROOT / "docs" / "bench.md").read_text(encoding="utf-8")
    section = doc.split("## Options at a glance", 1)[1].split("\n## ", 1)[0]
    table = section.split("\n`xmodal compare", 1)[0 if command == "bench" else 1]
    click_cmd = typer.main.get_command(app).commands[command]
    options = [o for p in click_cmd.params for o in p.opts if o.startswith("--") and o != "--help"]
    assert options
    missing = [o for o in options if f"`{o}" not in table]
    assert not missing, f"xmodal {command}: options not in docs/bench.md: {missing}"


def _commands(group, prefix=()):
    for name, sub in sorted(getattr(group, "commands", {}).items()):
        yield (*prefix, name), sub
        yield from _commands(sub, (*prefix, name))


def test_every_cli_option_is_documented_somewhere():
    """Every option of every `xmodal` command and sub-command is named in README.md or docs/
    (a boolean flag by either of its spellings, `--x` or `--no-x`)."""
    import typer.main

    from xmodal.cli import app

    docs = (ROOT / "README.md").read_text(encoding="utf-8") + "".join(
        p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))
    root = typer.main.get_command(app)
    missing = []
    for path, cmd in [((), root), *_commands(root)]:
        for param in cmd.params:
            spellings = [o for o in (*param.opts, *param.secondary_opts) if o.startswith("--")]
            if spellings and "--help" not in spellings and not any(
                    re.search(re.escape(o) + r"(?![\w-])", docs) for o in spellings):
                missing.append(f"xmodal {' '.join(path)} {spellings[0]}")
    assert not missing, f"options named nowhere in README.md or docs/: {missing}"
