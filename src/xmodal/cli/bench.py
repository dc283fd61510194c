"""``xmodal bench``: fit methods on a dataset and print the results table."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Optional

import typer

from ._values import _parse_options, _parse_params


# two procedures, one line so that a CI and a p-value disagreeing near 0.05 surprise nobody
_CI_VS_P = ("(p: paired sign-flip randomisation test, the significance test; 95% CI: percentile "
            "bootstrap over queries, the size of A-B; near p = 0.05 they can disagree)")

def _pick(recs: list[dict], name: str, path, every: list[dict] | None = None,
          bits: int | None = None) -> dict:
    """The one record ``name`` means: ``method:param=value,...`` for the record with exactly
    those --set settings; ``method`` for the method's record, or, where the method ran with
    several --set settings, its run without --set (also ``method:``). ``recs`` are the
    summaries the --bits / --dataset filters kept, ``every`` those before --bits (to say what
    a method has when none is at ``bits``)."""
    from pathlib import Path

    from ..data import DataError
    from ..evaluation.bench import RUN_FIELDS, config_label, differing_fields

    method, colon, spec = name.partition(":")
    of_method = [r for r in recs if r.get("method") == method]
    mine = of_method
    if colon:
        try:
            want = _parse_params([f"{method}.{item}" for item in spec.split(",") if item.strip()]).get(method, {})
        except typer.BadParameter:  # its message names --set, which was not typed here
            raise DataError(f"{name!r}: expected METHOD or METHOD:PARAM=VALUE,...") from None
        mine = [r for r in mine if (r.get("settings") or {}) == want]
    elif len({json.dumps(r.get("settings") or {}, sort_keys=True) for r in mine}) > 1:
        mine = [r for r in mine if not r.get("settings")] or mine  # the bare name: the run without --set
    if len(mine) == 1:
        return mine[0]
    if not mine:
        if of_method:
            raise DataError(f"{path}: no record for method {name!r}; its records: "
                            f"{', '.join(sorted({config_label(r) for r in of_method}))}")
        at_other_bits = sorted({r.get("bits") for r in (every or []) if r.get("method") == method},
                               key=lambda b: -1 if b is None else b)
        if bits is not None and at_other_bits:
            has = ("it is real-valued: drop --bits" if at_other_bits == [None] else
                   f"it has {', '.join('real-valued' if b is None else str(b) for b in at_other_bits)}")
            raise DataError(f"{path}: method {method!r} has records, but none at {bits} bits ({has})")
        held = sorted({r.get("method") for r in (every or recs)})
        # `xmodal compare a.jsonl b.jsonl A B`: the second file was read as a method name
        two = (f" ({name} is a file: xmodal compare reads one records file; put both runs in one, "
               f"e.g. cat {path} {name} > both.jsonl)" if Path(name).is_file() else "")
        raise DataError(f"{path}: no record for method {name!r}; the file holds: {', '.join(held)}{two}")
    configs = sorted({config_label(r) for r in mine})
    differ = differing_fields(mine)
    if len(configs) > 1:
        hint = f"name one of {', '.join(configs)}"
    elif differ and all(d.split(" ")[0] in RUN_FIELDS for d in differ):
        hint = ("their seeds ran with other parameters or data, which are never averaged together: "
                "rerun them with xmodal bench --resume on this file and the same --seeds (it redoes the stale "
                "records, and the newer ones are used), or keep one run per file")
    else:
        hint = "pass --bits or --dataset, or keep one configuration per file"
    raise DataError(f"{path}: {len(mine)} configurations for {name!r} (they differ in "
                    f"{', '.join(differ) or 'nothing recorded'}); {hint}")


# run_bench's argument -> (what it sets, the option that sets it on the command line)
_OWNED_BY = {"bits": ("bit length", "--bits"), "seed": ("seed", "--seed/--seeds")}


def _command_line(ctx: typer.Context) -> str:
    """The command as given (options at their defaults left out), rebuilt from click's parse so
    that it is right however the command was invoked (console script, ``python -m``, tests)."""
    words = ["xmodal"]
    for c in ([ctx.parent] if ctx.parent is not None else []) + [ctx]:
        if c is ctx:
            words.append(ctx.info_name or "bench")
        for param in c.command.params:
            source = c.get_parameter_source(param.name)  # by name: typer may vendor its own click
            if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
                continue
            value, opt = c.params.get(param.name), param.opts[0]
            if getattr(param, "is_flag", False):
                words += [opt] if value else []
            elif isinstance(value, (list, tuple)):
                for v in value:
                    words += [opt, str(v)]
            elif value is not None:
                words += [opt, str(value)]
    return shlex.join(words)


def _check_writable(opt: str, out) -> None:
    """Before the run: a file can be created beside ``out`` (created and removed again), so
    a finished run is never lost to a folder it cannot write."""
    import os
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".xmodal-", dir=out.parent)
    except OSError as exc:
        raise typer.BadParameter(f"{opt} {out}: cannot write in {out.parent} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    if out.exists() and not os.access(out, os.W_OK):
        raise typer.BadParameter(f"{opt} {out}: cannot write it (not writable)")


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench(
        ctx: typer.Context,
        dataset: str = typer.Option("wikipedia", "--dataset", "-d",
                                    help="wikipedia, ucm_captions, mirflickr25k, nus_wide, pascal_sentences, or a path: a pairs "
                                         "file, .mat, .npz, Karpathy .json, or a dataset folder (release, cleaned lists, index.mat)"),
        methods: str = typer.Option("cca,kcca,pls,mlcca,scm", "--methods", "-m", help="comma-separated method names"),
        bits: str = typer.Option("16,32,64,128", "--bits", help="bit lengths for hashing methods"),
        data_dir: Optional[str] = typer.Option(None, "--data-dir", help="dataset root (default $XMODAL_DATA, ../shared/data)"),
        image_encoder: Optional[str] = typer.Option(None, "--image-encoder", help="e.g. efficientnet-lite0"),
        text_encoder: Optional[str] = typer.Option(None, "--text-encoder", help="e.g. minilm"),
        cache_dir: Optional[str] = typer.Option(None, "--cache-dir", help="feature cache (default $XMODAL_CACHE or ~/.cache/xmodal)"),
        json_out: Optional[str] = typer.Option(None, "--json", help="write the records to this JSON file"),
        markdown: Optional[str] = typer.Option(None, "--markdown", help="also write the table as Markdown to this file"),
        resume: Optional[str] = typer.Option(None, "--resume", help="JSON-lines file: append each record as it finishes and reuse the records already there "
                                                "(only those of the same data: a dataset given by path is fingerprinted by its "
                                                "lists, tags, labels, captions and .mat files, not its images)"),
        labeled_fraction: Optional[float] = typer.Option(None, "--labeled-fraction", help="fraction of training labels the semi-supervised methods see (e.g. 0.1)"),
        database_codes: str = typer.Option("hash", "--database-codes", help="hashing database codes: 'hash' (the learned hash functions, on the dataset's database split) or 'learned' (the learned training codes, where a method keeps them; the database is then the training split)"),
        pr_plot: Optional[str] = typer.Option(None, "--pr-plot", help="write the precision-recall curves of every record to this PNG"),
        seed: str = typer.Option("0", "--seed", "--seeds", help="random seed, or comma-separated seeds: one run each, tables show mean±std"),
        set_: list[str] = typer.Option([], "--set", help="method parameter, METHOD.PARAM=VALUE (repeatable)"),
        data_option: list[str] = typer.Option([], "--data-option", help="dataset loader option, KEY=VALUE (repeatable; e.g. split=official for nus_wide, split=hashing for COCO's own files)"),
        per_query: bool = typer.Option(False, "--per-query", help="keep every query's AP and Recall@K hits in the records (for xmodal compare)"),
        test_folds: int = typer.Option(1, "--test-folds", min=1, help="score real-valued methods on N disjoint blocks of the test images and average (MSCOCO 1K test: 5)"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress output"),
    ) -> None:
        """Fit methods on the training split and print MAP / P@10 (and Recall@K where pairs allow)."""
        from ..data import DataError
        from ..encoders.base import EncoderError
        from ..methods import ParameterError
        from ..evaluation.bench import (BENCH_OWNED, DATABASE_CODES, format_hashing_tables, format_table,
                                        plot_pr_curves, provenance, run_bench, write_json)

        names = [m.strip() for m in methods.split(",") if m.strip()]
        if database_codes not in DATABASE_CODES:
            raise typer.BadParameter(f"--database-codes {database_codes!r}: expected one of {', '.join(DATABASE_CODES)}")
        if labeled_fraction is not None and not 0 < labeled_fraction <= 1:
            raise typer.BadParameter(f"--labeled-fraction {labeled_fraction}: expected a fraction in (0, 1]")
        try:
            bit_list = [int(b) for b in bits.split(",") if b.strip()]
        except ValueError:
            raise typer.BadParameter(f"--bits {bits!r}: expected comma-separated integers") from None
        try:
            seeds = [int(s) for s in seed.split(",") if s.strip()]
        except ValueError:
            seeds = []
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise typer.BadParameter(f"--seed {seed!r}: expected a seed or comma-separated distinct seeds (integers >= 0)")

        from pathlib import Path

        for opt, out in (("--json", json_out), ("--markdown", markdown), ("--resume", resume),
                         ("--pr-plot", pr_plot)):
            if out:  # before any fitting: a missing folder must not cost a finished run
                try:
                    Path(out).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    # a file where a folder of the path should be: name it (mkdir says "File exists")
                    blocker = next((p for p in Path(out).parents if p.exists() and not p.is_dir()), None)
                    why = f"{blocker} is a file, not a folder" if blocker else exc.strerror
                    raise typer.BadParameter(f"{opt} {out}: cannot create its folder ({why})") from None
                if Path(out).is_dir():
                    raise typer.BadParameter(f"{opt} {out}: is a folder; give a file name")
                _check_writable(opt, Path(out))

        def progress(rec: dict, reused: bool = False) -> None:
            if not quiet:
                bits_s = (f" {rec['bits']} bits" if rec["bits"] else "") + \
                    (f" seed {rec['seed']}" if len(seeds) > 1 else "")
                summary = " ".join(f"{d} {k}={rec[d][k]:.4f}" for d in ("i2t", "t2i") for k in ("map",) if k in rec[d])
                if "mR" in rec:
                    summary += f" mR={rec['mR']:.1f}"
                # a record taken from --resume says so: its fit seconds are the earlier run's
                print(f"[bench] {rec['method']}{bits_s}: {summary} ({rec['fit_seconds']:.1f}s fit)"
                      + (" (reused)" if reused else ""), file=sys.stderr, flush=True)

        params = _parse_params(set_)
        for method_name, given in params.items():  # worded for the command line, not run_bench's
            for pname, arg in BENCH_OWNED.items():
                if pname in given:
                    typer.echo(f"error: --set {method_name}.{pname}: the {_OWNED_BY[arg][0]} is set by "
                               f"{_OWNED_BY[arg][1]}, not by --set", err=True)
                    raise typer.Exit(2)
        if labeled_fraction is not None:  # ignored by every method here: say so, not in silence
            from .. import methods as registry
            from ..evaluation.bench import _accepts

            known = [n for n in names if n in registry.available()]  # unknown ones: refused below
            if known and len(known) == len(names) and \
                    not any(_accepts(registry.get(n), "labeled_fraction") for n in known):
                typer.echo(f"warning: --labeled-fraction {labeled_fraction}: no method here takes a label "
                           f"budget ({', '.join(names)}); only the semi-supervised ones do (see `xmodal "
                           "methods`), so it has no effect", err=True)
        command = _command_line(ctx)  # recorded with every new record
        import warnings

        def warn(message, category, filename, lineno, file=None, line=None) -> None:
            typer.echo(f"warning: {message}", err=True)  # the message, not the source line

        failed: list[dict] = []  # diverged runs: reported, the others go on
        try:
            warnings.showwarning, shown = warn, warnings.showwarning
            records = run_bench(dataset, names, bits=bit_list, seed=seeds, data_dir=data_dir,
                                image_encoder=image_encoder, text_encoder=text_encoder,
                                cache_dir=cache_dir, params=params, quiet=quiet,
                                labeled_fraction=labeled_fraction, database_codes=database_codes,
                                resume=resume, per_query=per_query, test_folds=test_folds,
                                on_record=progress, on_reused=lambda rec: progress(rec, reused=True),
                                command=command, failures=failed,
                                data_options=_parse_options(data_option))
        except (DataError, EncoderError, KeyError, ParameterError) as exc:
            # a KeyError's str() is its repr, quotes and all: print the message itself
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:  # Ctrl-C: say what a rerun starts from, as xmodal index does
            if resume:
                from ..evaluation.bench import read_jsonl

                try:
                    kept = f"{len(read_jsonl(resume))} record(s) kept in {resume}; the same command continues"
                except (DataError, OSError):
                    kept = f"the finished records are in {resume}; the same command continues"
            else:
                kept = "no record kept (--resume FILE.jsonl keeps each record as it finishes)"
            typer.echo(f"interrupted: {kept}", err=True)
            raise typer.Exit(130) from None
        finally:
            warnings.showwarning = shown
        typer.echo(f"dataset: {records[0]['dataset'] if records else dataset}")
        over = f"mean±std (sample standard deviation) over seeds {','.join(map(str, seeds))}"
        if len(seeds) > 1:
            typer.echo(over)
        flat = [r for r in records if not r["bits"]]
        hashed = [r for r in records if r["bits"]]
        hash_tables = format_hashing_tables(hashed) if hashed else None  # Markdown already
        parts = ([over] if len(seeds) > 1 else []) + ([format_table(flat, markdown=True)] if flat else []) + \
            ([hash_tables] if hashed else [])
        if flat:  # Markdown, as the hashing tables and the --markdown file are
            typer.echo(format_table(flat, markdown=True))
        if hashed:
            typer.echo(hash_tables)
        kept = (f"; the records are in {resume}" if resume else
                "; the records are not saved elsewhere (--resume FILE keeps them as they finish)")
        try:
            if markdown:
                where = markdown
                Path(markdown).write_text("\n\n".join(parts) + "\n\n" + provenance(command, records) + "\n")
            if pr_plot and records:
                where = pr_plot
                typer.echo(f"wrote precision-recall curves to {plot_pr_curves(records, pr_plot)}")
            if json_out:
                where = json_out
                write_json(records, json_out)
                typer.echo(f"wrote {len(records)} records to {json_out}")
        except OSError as exc:  # checked before the run, but a disk can fill meanwhile
            typer.echo(f"error: {where}: cannot write it ({exc.strerror or exc}){kept}", err=True)
            raise typer.Exit(2) from None
        if failed:
            for f in failed:
                bits_s = f" {f['bits']} bits" if f["bits"] else ""
                typer.echo(f"error: {f['method']}{bits_s} seed {f['seed']}: {f['error']}", err=True)
            typer.echo(f"error: {len(failed)} run(s) failed and are not in the tables or records", err=True)
            raise typer.Exit(1)

    @app.command("compare")
    def compare(
        records: str = typer.Argument(..., help="records of xmodal bench --per-query: a --resume JSON-lines or --json file"),
        names: list[str] = typer.Argument(..., metavar="A B [C ...]",
                                          help="methods (registry names as in the records), or "
                                               "METHOD:PARAM=VALUE,... for the run with those --set "
                                               "values; with more than two, every pair, p-values "
                                               "also Holm-adjusted"),
        metric: Optional[str] = typer.Option(None, "--metric", help="map, mR or r@K, any case (default: map where the records have it, else mR)"),
        bits: Optional[int] = typer.Option(None, "--bits", help="bit length, for hashing records"),
        dataset: Optional[str] = typer.Option(None, "--dataset", help="only the records of this dataset "
                                              "(its name in the records), for a file holding several"),
        resamples: int = typer.Option(9999, "--resamples", min=1, help="random sign flips of the randomisation test"),
        seed: int = typer.Option(0, "--seed", help="seed of the randomisation test"),
        as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar (shown on a terminal, "
                                   "on stderr, unless --json)"),
    ) -> None:
        """Paired significance test of two methods, or of every pair of several.

        A randomisation test on the per-query scores of the same test queries; several seeds
        of a method are averaged query by query, but only seeds run with the same parameters,
        data and tie order: records that differ there (a default changed, one seed redone) are
        refused, naming the field, and rerunning the seeds with --resume redoes the stale ones.
        The p-value is the paired sign-flip randomisation test's; the 95% CI of A-B is a
        percentile bootstrap over queries, a different procedure, so near p = 0.05 the two can
        disagree (read p for significance, the CI for the size of the difference)."""
        from pathlib import Path

        from ..data import DataError
        from ..evaluation.bench import check_record, read_jsonl, summarize_seeds
        from ..evaluation.significance import compare_all

        path = Path(records)
        try:
            if len(names) < 2 or len(set(names)) != len(names):
                raise DataError(f"name two or more different methods, got {' '.join(names)}")
            if not path.exists():
                raise DataError(f"{path}: no such records file")
            if path.is_dir():
                raise DataError(f"{path}: not a records file: a folder")
            try:
                text = path.read_text(encoding="utf-8").lstrip()
            except UnicodeDecodeError:
                raise DataError(f"{path}: not a records file: not UTF-8 text (a binary file?)") from None
            except OSError as exc:
                raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
            try:
                recs = json.loads(text) if text.startswith("[") else read_jsonl(path)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: not a records file of xmodal bench ({exc})") from None
            if not isinstance(recs, list):
                raise DataError(f"{path}: not a records file of xmodal bench")
            if not recs:
                raise DataError(f"{path}: holds no records (an empty file or list)")
            recs = [check_record(r, f"{path}: record {i}") for i, r in enumerate(recs, 1)]
            if dataset is not None:
                held = sorted({str(r["dataset"]) for r in recs})
                recs = [r for r in recs if r["dataset"] == dataset]
                if not recs:
                    raise DataError(f"{path}: no records of dataset {dataset!r}; the file holds: {', '.join(held)}")
            every = summarize_seeds(recs)  # seeds of one configuration pooled, never other params or data
            recs = [r for r in every if bits is None or r.get("bits") == bits]
            picked = [_pick(recs, name, path, every, bits) for name in names]
            # names as the tables print them (MAP, mR, R@1), in any case
            chosen = ({"map": "map", "mr": "mR"}.get(metric.lower(), metric.lower()) if metric else
                      "map" if all("map" in r["i2t"] for r in picked) else "mR")
            # a bar over the resamples (minutes for tens of thousands of queries): on a terminal's
            # stderr only, never with --json
            try:
                results = compare_all(dict(zip(names, picked)), chosen, n_resamples=resamples, seed=seed,
                                      progress=False if quiet or as_json else None)
            except (DataError, ValueError) as exc:  # records refused as a pair: name their file
                raise DataError(f"{path}: {exc}") from None
        except (DataError, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        several = len(names) > 2
        if as_json:
            for r in results:
                r["resamples"] = resamples
                if not several:  # one test: nothing to adjust
                    for d in ("i2t", "t2i", "both"):
                        r.get(d, {}).pop("p_holm", None)
            typer.echo(json.dumps(results if several else results[0], indent=1))
            return
        digits = 4 if chosen == "map" else 2
        for res in results:
            typer.echo(f"{chosen}: {res['a']} (A) vs {res['b']} (B), paired randomisation test, "
                       f"{resamples} resamples")
            for d, r in ((d, res[d]) for d in ("i2t", "t2i", "both") if d in res):
                holm_p = f"  Holm p = {r['p_holm']:.4f}" if several else ""
                typer.echo(f"  {d:5s} A {r['a']:.{digits}f}  B {r['b']:.{digits}f}  A-B {r['difference']:+.{digits}f}  "
                           f"95% CI [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]  p = {r['p_value']:.4f}"
                           + holm_p)
        typer.echo(_CI_VS_P)
