"""Precision-recall curves of bench records, drawn with matplotlib into one PNG.

:func:`plot_pr_curves` draws a panel per (dataset, bit length, direction) and a line per
method configuration (:func:`~xmodal.evaluation.tables.row_label`, as the hashing tables name
their rows: :func:`~xmodal.evaluation.tables.config_label` without the run's label budget),
from the ranking's PR curve or the Hamming-radius lookup's, averaged over seeds; the same checks as the tables refuse records that would share a line or a
panel while having run differently. matplotlib is imported only when a plot is drawn. The name
stays importable from :mod:`xmodal.evaluation.bench`.
"""

from __future__ import annotations

from pathlib import Path

from ..data import DataError
from .records import summarize_seeds
from .tables import Results, _heading, _one_protocol_each, _one_summary_each, as_records, row_label

_line_name = row_label  # a line per configuration, as a hashing table has a row per one


def plot_pr_curves(records: Results, path: str | Path, curve: str = "pr_curve") -> Path:
    """One PNG of precision-recall curves: a panel per (dataset, bits, direction), a line per
    method. ``curve="hamming_pr_curve"`` plots Hamming-radius lookup instead of the ranking.
    ``records``: bench records, or a dict of :func:`~xmodal.evaluation.evaluate` results by
    name (a line each). Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = summarize_seeds(as_records(records))  # one line per method: the mean over seeds
    _one_summary_each(records, "PR curves", _line_name)
    _one_protocol_each(records, "PR curves", by_bits=True)
    panels = sorted({(r["dataset"], r["bits"] or 0) for r in records if curve in r["i2t"]})
    if not panels:
        raise DataError(f"no record holds a {curve!r}")
    names = list(dict.fromkeys(_line_name(r) for r in records))  # a line per --set configuration
    # one fixed colour and marker per method across panels (20 colours, then markers differ)
    style = {n: dict(color=plt.cm.tab20(i % 20), marker="os^vD*"[(i // 20) % 6]) for i, n in enumerate(names)}
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for row, (dsname, b) in enumerate(panels):
        for col, d in enumerate(("i2t", "t2i")):
            ax = axes[row][col]
            for r in records:
                if r["dataset"] == dsname and (r["bits"] or 0) == b and curve in r[d]:
                    c = r[d][curve]
                    ax.plot(c["recall"], c["precision"], markersize=3, label=_line_name(r),
                            **style[_line_name(r)])
            ax.set_title(f"{_heading(dsname, f'{b} bits' if b else '')}: "
                         f"{'image->text' if d == 'i2t' else 'text->image'}".lstrip(": "))
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
