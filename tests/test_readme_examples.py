"""The README's Python examples run as written and print what their comments say."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import need

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    start = text.index(section)
    end = text.find("\n## ", start + len(section))
    return re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)


def test_researcher_python_examples_run_and_match_their_comments(tmp_path, monkeypatch):
    need("wikipedia")
    monkeypatch.chdir(tmp_path)  # the example saves cca.xmodal in the working folder
    monkeypatch.setenv("XMODAL_DATA", str(need("wikipedia").parent))
    blocks = _python_blocks("## Researchers: reproduce a table")
    assert len(blocks) >= 2, "the README lost its Python examples"
    ns: dict = {}
    for block in blocks[:3]:
        exec(compile(block, str(README), "exec"), ns)
    from xmodal.evaluation import evaluate

    scores = evaluate(ns["cca"], ns["test"])
    # what the comments claim, and the same numbers evaluate() gives
    assert ns["mean_average_precision"](ns["S"], ns["R"]) == pytest.approx(scores["i2t"]["map"], abs=1e-9)
    assert round(scores["i2t"]["map"], 3) == 0.241
    assert round(ns["precision_at_k"](ns["S"], ns["R"], k=10), 3) == 0.220
    r = ns["recall_at_k"](ns["S"], ns["pairs"], ks=(1, 5, 10))
    assert [100 * r[k] for k in (1, 5, 10)] == pytest.approx([scores["i2t"][f"r@{k}"] for k in (1, 5, 10)])
    ham = ns["mean_average_precision"](distances=ns["D"], relevant=ns["R"])
    assert round(ham, 3) == 0.269
    # the notebook comparison block: a row per name, the difference its comment gives, a plot
    assert round(ns["compare_records"](ns["res"]["cca"], ns["res"]["scm"], "map")["i2t"]["difference"], 3) == -0.035
    assert (tmp_path / "pr.png").stat().st_size > 0
    assert {r["method"] for r in ns["recs"]} == {"cca", "scm"} and len(ns["recs"]) == 6
