"""``xmodal encode``: turn a dataset's raw images and texts into feature matrices (.npz)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import typer

from .._fs import blocking_file
from ._values import _parse_options


def _default_out(dataset: str, image_encoder: str | None, text_encoder: str | None) -> Path:
    name = dataset
    if "/" in dataset or "." in dataset:  # a path: named after the dataset it holds
        path = Path(dataset).absolute()
        # `.` gave a hidden `.<spec>.npz`; every Karpathy file is a dataset.json, whose stem
        # made two datasets' outputs one file: such a file is named by its folder
        name = path.parent.name if path.is_file() and path.stem == "dataset" else \
            (Path(os.path.normpath(path)).name if path.is_dir() else path.stem)
    parts = [name or "dataset"]  # the root folder has no name
    parts += [e for e in (image_encoder, text_encoder) if e]
    return Path(re.sub(r"[^A-Za-z0-9._-]+", "_", ".".join(parts)) + ".npz")


def _check_out(out: Path) -> None:
    """``--out`` refused before any encoding: a folder, a path under a file, another suffix
    (as ``xmodal export`` asks for .npz: numpy would add it and write elsewhere)."""
    def fail(why: str) -> None:
        typer.echo(f"error: {out}: {why}", err=True)
        raise typer.Exit(2)

    if out.is_dir():
        fail("is a folder; give the .npz file to write")
    if out.suffix.lower() != ".npz":
        fail("the output file name must end in .npz")
    above = blocking_file(out)
    if above is not None:
        fail(f"cannot be written: {above} is not a folder")


def register(app: typer.Typer) -> None:
    @app.command("encode")
    def encode_cmd(
        dataset: str = typer.Option(..., "--dataset", help="dataset name (ucm_captions, ...) or path"),
        image_encoder: Optional[str] = typer.Option(None, "--image-encoder",
                                                    help="e.g. efficientnet-lite0, mobilenet-v2, sift-bovw"),
        text_encoder: Optional[str] = typer.Option(None, "--text-encoder",
                                                   help="e.g. minilm, tfidf, lda:10, tags"),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="folder holding the dataset"),
        cache_dir: Optional[str] = typer.Option(None, "--cache-dir",
                                                help="feature cache (default $XMODAL_CACHE or ~/.cache/xmodal)"),
        out: Optional[Path] = typer.Option(None, "--out", help="output .npz "
                                           "(default <dataset>.<image>.<text>.npz)"),
        fit_split: str = typer.Option("train", "--fit-split", help="split that fitted encoders learn from"),
        data_option: list[str] = typer.Option([], "--data-option", help="dataset loader option, KEY=VALUE "
                                              "(repeatable; as xmodal bench, e.g. n_query=20 for a small "
                                              "NUS-WIDE or MIRFlickr copy)"),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bars"),
        as_json: bool = typer.Option(False, "--json", help="machine-readable summary on stdout"),
    ) -> None:
        """Encode a dataset's images and texts; write features, ids, labels and splits to .npz.

        The file is a dataset too: `xmodal bench --dataset FILE.npz` benches it without
        encoding again (on this machine or another)."""
        import logging
        import time

        from ..data import DataError, load_dataset, save_npz
        from ..encoders import EncoderError, encode_dataset

        if image_encoder is None and text_encoder is None:
            raise typer.BadParameter("give --image-encoder and/or --text-encoder")
        options = _parse_options(data_option)
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
        out = out or _default_out(dataset, image_encoder, text_encoder)
        _check_out(out)
        from ..encoders.base import checked_cache_dir

        try:  # a --cache-dir that is a file: refused before the dataset is read
            cache_root = checked_cache_dir(cache_dir)
        except EncoderError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        t0 = time.perf_counter()
        try:
            ds = load_dataset(dataset, data_dir=data_dir, **options)
            ds = encode_dataset(ds, image_encoder, text_encoder,
                                cache_dir=cache_dir, fit_split=fit_split, quiet=quiet,
                                batch_size=batch_size)
        except (DataError, EncoderError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:  # Ctrl-C: say what a rerun starts from, as bench and index do
            typer.echo(f"\ninterrupted: {out} was not written; every batch encoded so far is kept "
                       f"in the feature cache {cache_root}; run the same command again to encode "
                       "only the rest", err=True)
            raise typer.Exit(130) from None
        try:
            out_path = save_npz(ds, out)
        except OSError as exc:  # the disk filled, the folder was made read-only meanwhile
            typer.echo(f"error: {out}: cannot write it ({exc.strerror or exc})", err=True)
            raise typer.Exit(2) from None
        enc = ds.meta.get("encoding", {})
        # a fitted encoder's state (bytes) is in the file; the summary names it by state_hash
        side = {k: None if enc.get(k) is None else {f: v for f, v in enc[k].items() if f != "state"}
                for k in ("image_encoder", "text_encoder")}
        summary = {
            "dataset": ds.name, "out": str(out_path), "n_images": ds.n_images, "n_texts": ds.n_texts,
            "image_encoder": side["image_encoder"], "text_encoder": side["text_encoder"],
            "skipped": enc.get("skipped", []), "seconds": round(time.perf_counter() - t0, 2),
        }
        if as_json:
            typer.echo(json.dumps(summary, indent=1))
            return
        for side in ("image_encoder", "text_encoder"):
            e = summary[side]
            if e:
                typer.echo(f"{side.split('_')[0]:<5} {e['spec']:<20} dim {e['dim']:<5} "
                           f"computed {e['n_computed']:<6} cached {e['n_cached']:<6} {e['seconds']:.1f}s")
        if summary["skipped"]:
            typer.echo(f"skipped {len(summary['skipped'])} unreadable images: "
                       + ", ".join(s["file"] for s in summary["skipped"][:5])
                       + (" ..." if len(summary["skipped"]) > 5 else ""))
        typer.echo(f"wrote {out_path}: {ds.n_images} images, {ds.n_texts} texts "
                   f"in {summary['seconds']:.1f}s")
