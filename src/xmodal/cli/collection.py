"""``xmodal index``, ``xmodal search``, ``xmodal serve`` and ``xmodal keys``: the search engine."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Optional

import typer

COLLECTION_OPT = typer.Option(..., "--collection", "-c", help="collection directory")


def _fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


def _os_words(exc: OSError, path: Path | str) -> str:
    """``PATH: reason`` for an operating-system error (the file it names, else ``path``)."""
    return f"{exc.filename or path}: {exc.strerror or exc}"


def _positive(value: float) -> float:
    if not value > 0:  # NaN too
        raise typer.BadParameter(f"{value} is not above 0")
    if value == float("inf"):  # a limit in bytes is an integer: int(inf) raised OverflowError
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def _distinct(collections: list[Path]) -> None:
    """The same collection given twice (under any spelling) is refused: its hits would print
    twice, and stats would call it two shards."""
    seen: dict[Path, Path] = {}
    for c in collections:
        real = Path(c).expanduser().resolve()
        if real in seen:
            same = "" if str(seen[real]) == str(c) else f" (as {seen[real]})"
            _fail(f"{c}: collection given twice{same}; give each collection once")
        seen[real] = c


def _open(path: Path, read_only: bool | None = None, follow: bool = False, keep_open: bool = False):
    """The collection at ``path``, closed when the command ends (its last connection closing
    merges the write-ahead log, so a read-only open right after finds one file), unless
    ``keep_open`` (a server's, which the app goes on using)."""
    from ..index import Collection, CollectionError
    from . import OPENED

    try:
        coll = Collection.open(path, read_only=read_only, follow=follow)
    except CollectionError as exc:
        _fail(str(exc))
    except OSError as exc:  # a name too long for the file system: named, not a traceback
        _fail(_os_words(exc, path))
    if not keep_open:
        OPENED.append(coll)  # closed by the root command's call_on_close
    return coll


def _plan_text(plan: dict) -> str:
    """``xmodal index --dry-run``'s summary, one line per modality (and one for removals)."""
    head = f"{plan['collection']}: dry run, nothing written"
    if plan["action"] == "create":
        how = f"with {plan['like']}'s method and encoders" if "like" in plan else f"fitting {plan['method']}"
        if plan.get("params"):
            how += f" ({', '.join(f'{k}={_value_words(v)}' for k, v in plan['params'].items())})"
        return (f"{head}\nwould create the collection {how}: {plan['images']} images, "
                f"{plan['texts']} texts from {plan['source']}")
    lines = [head]
    for modality in ("image", "text"):
        r = plan[modality]
        line = (f"{modality}s: {len(r['new'])} new, {len(r['changed'])} changed (re-encoded), "
                + (f"{len(r['moved'])} moved (path updated, not re-encoded), " if r.get("moved") else "")
                + (f"{len(r['relabelled'])} relabelled (labels updated, not re-encoded), "
                   if r.get("relabelled") else "")
                + f"{r['unchanged']} unchanged")
        if r["unreadable"]:
            line += f", {len(r['unreadable'])} skipped as unreadable (e.g. {r['unreadable'][0]})"
        lines.append(line)
        lines += [f"  + {k}" for k in r["new"][:5]] + ([f"  ... {len(r['new']) - 5} more"] if len(r["new"]) > 5 else [])
    if "removed" in plan:
        gone = plan["removed"]
        lines.append(f"removed by --prune: {len(gone)} item(s)")
        lines += [f"  - {g['modality']} {g['id']} {g['key']}" for g in gone[:10]]
        if len(gone) > 10:
            lines.append(f"  ... {len(gone) - 10} more")
    return "\n".join(lines)


def _option_words(collection: Path, options: list) -> str:
    """:class:`xmodal.index.build.OtherOption` facts worded in this command's option names."""
    words = []
    for o in options:
        flag = o.name.replace("_", "-")
        if o.name == "method_params":  # typed as --set PARAM=VALUE
            has = o.has or {}
            words += [f"--set {k}={_value_words(v)} (" + (f"it has {k}={_value_words(has[k])}" if k in has else
                                                          "it has no fitted method" if o.has is None
                                                          else f"it has no {k}") + ")"
                      for k, v in o.asked.items()]
        elif isinstance(o.asked, bool):
            words.append(f"--{flag} ({o.reason})" if o.asked else f"--no-{flag} ({o.reason})")
        else:
            asked = o.asked if isinstance(o.asked, (str, Path)) else f"{type(o.asked).__name__} object"
            why = o.reason or f"it has {o.has or 'none'}"
            words.append(f"--{flag} {asked} ({why})")
    return (f"{collection}: an existing collection keeps what it was made with; {'; '.join(words)}: "
            f"add --rebuild to start it afresh with them (refits the method)")


def _value_words(value: object) -> str:
    """A ``--set`` value as it is typed: a string bare, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _refuse_ignored_options(ctx: typer.Context, collection: Path, method_params: dict | None = None,
                            **given: object) -> None:
    """An existing collection keeps the method, encoders and index it was made with: an option
    typed on the command line that asks for another one is refused rather than silently
    ignored (the run would report the old index, the user believing in the new one). Before
    the source is scanned; the facts are :func:`xmodal.index.build.other_options`'s.
    ``method_params``: the ``--set`` parameters (their method's rules checked too)."""
    from ..index import Collection, CollectionError
    from ..index.build import other_options
    from ..methods import ParameterError

    typed = {name: v for name, v in given.items()
             if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"}
    if method_params:
        typed["method_params"] = method_params
    if not typed:
        return
    try:
        if not Collection.exists(collection):
            return
        coll = Collection.open(collection, read_only=True)
    except (CollectionError, OSError):
        return  # build_collection reports it (a damaged one: with its cures, --rebuild among them)
    try:
        differ = other_options(coll, typed)
    except ParameterError as exc:
        _fail(f"--set: {exc}")
    except KeyError as exc:  # its stored method's plugin not loaded
        _fail(f"--set: {exc.args[0]}")
    except CollectionError as exc:
        _fail(str(exc))
    finally:
        coll.close()
    if differ:
        _fail(_option_words(collection, differ))


def _say_binary_spec(collection: Path, rebuild: bool, like: Optional[Path], method: str,
                     index: Optional[str]) -> None:
    """A binary (hashing) method given a real-valued --index spec (Flat, HNSW32) gets its binary
    counterpart (BFlat, BHNSW32: :func:`xmodal.index.vector.normalize_spec`, kept so in the
    Python API): said on stderr, as the run's summary would otherwise name an index not typed."""
    from ..index import Collection, CollectionError
    from ..index.build import _is_method_file
    from ..index.vector import normalize_spec, split_spec

    if index is None or like is not None:
        return
    try:
        if not rebuild and Collection.exists(collection):
            return  # an existing collection keeps its own index (refused above if another is typed)
    except (CollectionError, OSError):
        return  # damaged, or a name too long: build_collection refuses it, with its cures
    if _is_method_file(method):
        return  # its output is known once the file is loaded; the summary names the index
    from ..methods import get

    try:
        output = get(method).output
        spec = normalize_spec(output, index)
    except (KeyError, ValueError):
        return  # an unknown method or a bad spec: refused by the build with its own words
    if output == "binary" and split_spec(spec)[0] != split_spec(index)[0]:
        typer.echo(f"note: --index {index}: method {method} is binary (hashing), so the index is the "
                   f"binary {spec}; give --index {spec} to say so", err=True)


def _check_port(host: str, port: int) -> None:
    """A port already in use (another server) or an address this machine does not have is
    refused before the collection is opened, with exit 2 (uvicorn would log its own message
    and exit 3). The socket is closed at once; port 0 (any free one) always binds."""
    import socket

    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        _fail(f"--host {host}: cannot listen there ({exc.strerror or exc})")
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a TIME_WAIT port is free
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                _fail(f"{where}: the port is in use (another server?); pick another with --port "
                      "(--port 0: any free one)")
            _fail(f"{where}: cannot listen there ({exc.strerror or exc})")


def _counted(counts: dict[str, int]) -> str:
    """'571 images and 1 text': a collection's item counts in words."""
    return " and ".join(f"{n} {m}{'' if n == 1 else 's'}" for m, n in counts.items())


def register(app: typer.Typer) -> None:
    from ..index.build import DEFAULT_IMAGE_ENCODER, DEFAULT_METHOD, DEFAULT_TEXT_ENCODER

    @app.command("index")
    def index_cmd(
        ctx: typer.Context,
        source: str = typer.Argument(..., help="a folder of images (captions in sidecar NAME.txt files), "
                                     "a pairs file (.jsonl/.csv), a Karpathy dataset.json or a dataset name"),
        collection: Path = COLLECTION_OPT,
        # None when not typed: a new collection gets DEFAULT_METHOD / Flat, an existing one keeps
        # its own (build_collection refuses any other value rather than ignoring it)
        method: Optional[str] = typer.Option(None, help=f"method name fitted on the source's pairs, or a "
                                             f"saved fitted method file (method.save(path), any name) (default: {DEFAULT_METHOD}; "
                                             f"an existing collection: its own)", show_default=False),
        # None: the encoders a fitted --method FILE records, else the defaults (build.py)
        image_encoder: Optional[str] = typer.Option(
            None, help=f"image feature encoder (default: the one a --method FILE was "
                       f"fitted with, else {DEFAULT_IMAGE_ENCODER})", show_default=False),
        text_encoder: Optional[str] = typer.Option(
            None, help=f"text feature encoder (default: the one a --method FILE was "
                       f"fitted with, else {DEFAULT_TEXT_ENCODER})", show_default=False),
        index: Optional[str] = typer.Option(None, help="FAISS factory string (Flat, HNSW32, IVF256,Flat; "
                                            "binary: BFlat, BHNSW32, BHash2x16); a flat exact index always "
                                            "exists too (default: Flat; an existing collection: its own)",
                                            show_default=False),
        rerank: bool = typer.Option(False, help="binary methods: keep float projections to re-rank "
                                    "Hamming shortlists"),
        public_read: bool = typer.Option(True, help="new collection: searching needs no API key"),
        rebuild: bool = typer.Option(False, help="start the collection afresh (refit the method)"),
        like: Optional[Path] = typer.Option(None, "--like", help="a new shard of this collection's "
                                            "common space: its fitted method and encoders, no refit"),
        prune: bool = typer.Option(False, "--prune", help="also remove the items the source no longer "
                                   "has (deleted or renamed files, removed caption lines; items added "
                                   "over HTTP too): the collection then mirrors the source"),
        dry_run: bool = typer.Option(False, "--dry-run", help="say what would be added, re-encoded and "
                                     "(with --prune) removed; encode, fit and write nothing"),
        data_option: list[str] = typer.Option([], "--data-option", help="dataset loader option, KEY=VALUE "
                                              "(repeatable; e.g. n_val_per_class=0 for a small Pascal copy), "
                                              "as in xmodal bench"),
        set_: list[str] = typer.Option([], "--set", metavar="PARAM=VALUE",
                                       help="a parameter of the method fitted here, e.g. --set bits=128 "
                                       "(repeatable; VALUE as JSON when it parses, else a string); one "
                                       "given is left out of the cross-validated search. Not with --like "
                                       "or a --method FILE (fitted already); an existing collection: "
                                       "only its own values"),
        as_json: bool = typer.Option(False, "--json", help="print the result (or the --dry-run plan) as JSON"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    ) -> None:
        """Index images and captions into a collection.

        The collection is created and its method fitted on first use, then extended
        incrementally: unchanged files cost nothing."""
        from ..data.dataset import DataError
        from ..encoders.base import EncoderError
        from ..index import CollectionError, IndexSpecError, build_collection, plan_collection
        from ..index.build import OtherOptionsError, _is_method_file
        from ..methods import ParameterError
        from ._values import _parse_options

        data_options = _parse_options(data_option)
        method_params = _parse_options(set_, "--set", "PARAM=VALUE")
        for item in set_:  # bench's METHOD.PARAM=VALUE: index fits one method
            key, _, raw = item.partition("=")
            if "." in key.strip().strip("."):
                _fail(f"--set {item}: xmodal index fits one method; give the parameter alone, "
                      f"--set {key.strip().rpartition('.')[2]}={raw}")

        if like is not None:  # a shard takes its base's fitted method and encoders, never these
            typed = [f"--{name.replace('_', '-')}" for name in ("method", "image_encoder", "text_encoder")
                     if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"]
            typed += ["--set"] if set_ else []
            if typed:
                _fail(f"--like {like} reuses that collection's fitted method and encoders; "
                      f"{', '.join(typed)} would be ignored: leave it out, or index without --like "
                      "to fit a new space")
        if method_params and method is not None and _is_method_file(method):
            _fail(f"--set {' '.join(set_)}: --method {method} is a fitted method, its parameters fixed "
                  f"when it was fitted; --set applies to a method fitted here (--method NAME)")
        if not rebuild:
            _refuse_ignored_options(ctx, collection, method_params, method=method, index=index,
                                    image_encoder=image_encoder, text_encoder=text_encoder, rerank=rerank)
        _say_binary_spec(collection, rebuild, like, method or DEFAULT_METHOD, index)
        if dry_run:
            try:
                plan = plan_collection(source, collection, method=method, method_params=method_params or None,
                                       index=index, overwrite=rebuild,
                                       like=like, prune=prune, rerank=rerank,
                                       image_encoder=image_encoder, text_encoder=text_encoder,
                                       data_options=data_options)
            except OtherOptionsError as exc:
                _fail(_option_words(collection, exc.options))
            except ParameterError as exc:
                _fail(f"--set: {exc}")
            except (DataError, CollectionError, IndexSpecError, EncoderError, KeyError) as exc:
                _fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
            except OSError as exc:
                _fail(_os_words(exc, collection))
            typer.echo(json.dumps(plan, indent=1) if as_json else _plan_text(plan))
            return
        from ..index import Collection

        # what the collection held before: said beside what it holds if the run is interrupted
        try:
            before = None if rebuild else Collection.stored_counts(collection)
        except OSError as exc:  # a name too long for the file system
            _fail(_os_words(exc, collection))
        try:
            coll = build_collection(source, collection, method=method, method_params=method_params or None,
                                    image_encoder=image_encoder,
                                    text_encoder=text_encoder, index=index, rerank=rerank,
                                    public_read=public_read, overwrite=rebuild, quiet=quiet, like=like,
                                    prune=prune, data_options=data_options)
        except OtherOptionsError as exc:
            _fail(_option_words(collection, exc.options))
        except ParameterError as exc:
            _fail(f"--set: {exc}")
        except (DataError, CollectionError, IndexSpecError, EncoderError, KeyError) as exc:
            _fail(str(exc.args[0]) if isinstance(exc, KeyError) else str(exc))
        except OSError as exc:  # a folder that cannot be written, a full disk
            _fail(_os_words(exc, collection))
        except KeyboardInterrupt:
            # Ctrl-C: every batch committed so far is kept, and the encoders' feature cache
            # holds what was encoded; the same command continues from there. Stopped while
            # encoding or fitting for a new collection, there is no collection to speak of.
            now = Collection.stored_counts(collection)
            if now is not None:
                had = "" if before is None else f" ({_counted(before)} before this run)"
                typer.echo(f"\ninterrupted: {collection} keeps every batch stored so far and holds "
                           f"{_counted(now)}{had}; run the same command again to continue (what is "
                           "stored is not encoded again)", err=True)
            else:
                typer.echo(f"\ninterrupted before anything was stored: {collection} was not created; "
                           "run the same command again (features encoded so far are cached)", err=True)
            raise typer.Exit(130) from None
        from . import OPENED

        OPENED.append(coll)  # closed when the command ends, as _open's are
        s = coll.stats()
        run = coll.last_add.counts() if coll.last_add is not None else None  # what this run did
        if as_json:
            typer.echo(json.dumps({"collection": str(collection), **s, "run": run}))
            return
        typer.echo(f"{collection}: {s['images']} images, {s['texts']} texts, method {s['method']}, "
                   f"{s['output']} {s['dim']}-d, index {s['index']}")
        if run is not None:
            typer.echo("this run: " + ", ".join(f"{k} {v}" for k, v in run.items()))

    @app.command("search")
    def search_cmd(
        query: Optional[str] = typer.Argument(None, help="a text query"),
        collection: list[Path] = typer.Option([], "--collection", "-c",
                                              help="collection directory (repeat: search shards as one)"),
        shard: list[str] = typer.Option([], "--shard", help="URL of an `xmodal serve` shard of the same "
                                        "common space (repeatable)"),
        api_key: list[str] = typer.Option([], "--api-key", envvar="XMODAL_API_KEY",
                                          help="API key for the --shard servers, or URL=KEY for one of "
                                          "them (repeatable: a key belongs to one collection)"),
        shard_timeout: float = typer.Option(30.0, "--shard-timeout", min=0.1,
                                            help="seconds a --shard server has to answer a query"),
        image: list[Path] = typer.Option([], "--image", help="an image file as the query (repeatable: "
                                         "one result list per image)"),
        queries: Optional[Path] = typer.Option(None, "--queries", help="a text file, one text query per "
                                               "line (blank lines skipped): one result list per line"),
        item: Optional[int] = typer.Option(None, "--item", help="an item id as the query (more like this)"),
        k: int = typer.Option(10, "-k", min=1, max=10000, help="results"),
        target: Optional[str] = typer.Option(None, help="image or text (default: the other modality "
                                             "of a text or image query; with --item, the item's own)"),
        label: list[str] = typer.Option([], "--label", help="only results with this label (repeatable)"),
        exact: bool = typer.Option(False, help="use the flat exact index"),
        distinct: bool = typer.Option(False, help="show identical texts once"),
        as_json: bool = typer.Option(False, "--json", help="JSON output"),
    ) -> None:
        """Search a collection, or several shards as one.

        One result per line: score, id, path or text (and the shard, with several). With
        several queries (--queries, repeated --image) each line starts with the query's number
        (from 0), and --json prints one JSON line per query."""
        if (query is not None) + bool(image) + (item is not None) + (queries is not None) != 1:
            _fail("give exactly one of: a text query, --image FILE, --item ID, --queries FILE")
        texts: list[str] = []
        if queries is not None:
            from ..data.dataset import DataError, read_text

            try:
                texts = [ln.strip() for ln in read_text(queries).splitlines() if ln.strip()]
            except DataError as exc:
                _fail(str(exc))
            except OSError as exc:
                _fail(f"{queries}: {exc.strerror or exc}")
            if not texts:
                _fail(f"{queries}: no queries (every line is blank)")
        for path in image:
            try:
                is_file, is_dir = path.is_file(), path.is_dir()
            except OSError as exc:  # a name too long for the file system
                _fail(_os_words(exc, path))
            if not is_file:
                _fail(f"{path}: " + ("a folder; --image takes image files (repeat it for several)"
                                     if is_dir else "no such file"))
        if target not in (None, "image", "text"):
            _fail(f"--target must be image or text, got {target!r}")
        if not collection and not shard:
            _fail("give a collection (-c DIR) or a shard (--shard URL)")
        _distinct(collection)
        sharded = len(collection) + len(shard) > 1 or bool(shard)
        if sharded and item is not None:
            _fail("--item needs a single collection: item ids are per shard")
        from ..index import CollectionError
        from ..index.shards import check_labels, open_shards, shard_keys

        label = [lab.strip() for lab in label if lab.strip()]  # stored labels are trimmed (as HTTP's)
        try:
            shard_keys(shard, api_key or None, "--api-key")  # its errors name the option
            coll = (open_shards(collection, shard, api_key=api_key or None, timeout=shard_timeout) if sharded
                    else _open(collection[0]))
            # a typo (or a label only the other modality has) would otherwise print no
            # results and exit 0; checked against the items searched: the target's
            want = target or ("image" if query is not None or texts else "text" if image else None)
            if want is None and label:  # --item: its own modality (an unknown id fails below)
                got = coll.get_item(item)
                want = got.modality if got is not None else None
            check_labels(coll, label, str(collection[0]) if not sharded else "the shards", target=want)
        except CollectionError as exc:
            _fail(str(exc))
        kw = dict(labels=label or None, exact=exact, distinct=distinct, check_labels=False)  # checked above
        try:
            if query is not None:
                results = [coll.search_text(query, k, target or "image", **kw)]
            elif texts:
                results = coll.search_texts(texts, k, target or "image", **kw)
            elif image:
                results = coll.search_images(image, k, target or "text", **kw)
            else:
                results = [coll.search_item(item, k, target, **kw)]
        except KeyError as exc:  # an --item id it does not hold: named with the collection
            _fail(("" if sharded else f"{collection[0]}: ") + str(exc.args[0]))
        except (ValueError, CollectionError) as exc:
            _fail(str(exc))
        many = bool(texts) or len(image) > 1
        if not any(results) and not sharded:  # say why nothing printed (stdout stays clean)
            want = want or coll.get_item(item).modality  # the target the label check used
            if coll.count(want) == 0:
                typer.echo(f"no results: {collection[0]} holds no {want}s", err=True)
        if as_json and not many:
            typer.echo(json.dumps([h.to_dict() for h in results[0]], indent=1))
            return
        asked = texts or [str(p) for p in image]
        for q, hits in enumerate(results):
            if as_json:
                typer.echo(json.dumps({"query": q, "text" if texts else "image": asked[q],
                                       "hits": [h.to_dict() for h in hits]}))
                continue
            lead = f"{q}\t" if many else ""
            for h in hits:
                what = (h.path or h.key or "") if h.modality == "image" else (h.text or "")  # vectors-only items have no path
                what = " ".join(what.split("\t")).replace("\r", " ").replace("\n", " ")  # one TSV row
                where = f"{h.shard}\t" if h.shard is not None else ""
                typer.echo(f"{lead}{h.score:.4f}\t{where}{h.id}\t{what}")

    @app.command("stats")
    def stats_cmd(
        collection: list[Path] = typer.Option([], "--collection", "-c", help="collection directory (repeatable)"),
        shard: list[str] = typer.Option([], "--shard", help="URL of an `xmodal serve` (repeatable)"),
        api_key: list[str] = typer.Option([], "--api-key", envvar="XMODAL_API_KEY",
                                          help="API key for the --shard servers, or URL=KEY for one of "
                                          "them (repeatable: a key belongs to one collection)"),
        shard_timeout: float = typer.Option(30.0, "--shard-timeout", min=0.1,
                                            help="seconds a --shard server has to answer"),
        as_json: bool = typer.Option(False, "--json", help="JSON output"),
    ) -> None:
        """What collections and served shards hold, and whether they share one space.

        Items, method, encoders, index and the common-space fingerprint of each; with
        several, whether they can be searched as one (exit status 1 when they cannot: other
        spaces, or one collection given twice, a copy or a server under two URLs)."""
        from ..index import CollectionError
        from ..index.shards import RemoteShard, _identity, shard_keys

        if not collection and not shard:
            _fail("give a collection (-c DIR) or a shard (--shard URL)")
        _distinct(collection)
        rows = []
        try:
            keys = shard_keys(shard, api_key or None, "--api-key")
            for path in collection:
                coll = _open(path)
                rows.append({"name": str(path), **coll.stats()})
                coll.close()
            for url, key in zip(shard, keys):
                rows.append({"name": url, **RemoteShard(url, api_key=key, timeout=shard_timeout).stats()})
        except CollectionError as exc:
            _fail(str(exc))
        spaces = {r.get("space") for r in rows}
        # one collection given twice (a snapshot copy, one server under two URLs): one space,
        # but `xmodal search` refuses it, as its hits would count twice (shards._identity)
        seen: dict = {}
        same = []
        for r in rows:
            ident = _identity(r)
            if ident is not None and ident in seen:
                same.append([seen[ident], r["name"]])
            elif ident is not None:
                seen[ident] = r["name"]
        # one collection is one space; several are one when they share a fingerprint
        out = {"collections": rows,
               "one_space": len(rows) == 1 or (len(spaces) == 1 and None not in spaces),
               "same_collection": same}
        out["searchable"] = out["one_space"] and not same
        # several that cannot be searched as one exit 1 (the report printed): a script checking
        # that shards can be searched together must not read success
        apart = len(rows) > 1 and not out["searchable"]
        if as_json:
            typer.echo(json.dumps(out, indent=1))
            if apart:
                raise typer.Exit(1)
            return
        for r in rows:
            enc = ", ".join(f"{m} {spec}" for m, spec in (r.get("encoders") or {}).items()) or "none"
            typer.echo(f"{r['name']}: {r['images']} images, {r['texts']} texts, method {r.get('method')}, "
                       f"{r['output']} {r['dim']}-d, index {r['index']}, encoders {enc}, space {r.get('space')}")
        for a, b in same:
            typer.echo(f"{a} and {b} are one collection (a copy, or one server given twice): "
                       "not searchable as shards, its hits would count twice; give it once")
        if len(rows) > 1 and not same:
            typer.echo("one common space: searchable as shards" if out["one_space"] else
                       "different common spaces: not searchable as one (index shards with --like)")
        if apart:
            raise typer.Exit(1)

    @app.command("remove")
    def remove_cmd(
        ids: list[str] = typer.Argument(None, help="item ids (as `xmodal search` prints them)"),
        collection: Path = COLLECTION_OPT,
        key: list[str] = typer.Option([], "--key", help="an item key (an image's path in the source, "
                                      "a caption's PATH#N); repeatable"),
        as_json: bool = typer.Option(False, "--json", help="JSON output"),
    ) -> None:
        """Remove items by id or key; an image takes its captions with it.

        An id or key the collection does not hold is an error, and then nothing is removed."""
        from ..index import CollectionError

        # read as text: a key typed where ids go (the item's path) is answered with the
        # option that takes it, not a bare "not a valid integer"
        for i in ids or []:
            if not i.strip().isdecimal():  # what int() reads (isdigit() passes "²")
                _fail(f"{i!r} is not an item id (a number, as `xmodal search` prints it); "
                      f"to remove by key: --key {i}")
        ids = [int(i) for i in ids or []]
        if not ids and not key:
            _fail("give item ids or --key KEY")
        coll = _open(collection)
        try:
            missing = [str(i) for i in ids if not coll.get_items([i])] + [k for k in key if coll.id_of(k) is None]
            if missing:
                _fail(f"{collection}: no item {', '.join(missing)}; nothing removed")
            gone = coll.delete(ids=ids, keys=key, actor="cli")
        except CollectionError as exc:
            _fail(str(exc))
        typer.echo(json.dumps({"removed": gone}) if as_json else
                   f"{collection}: removed {len(gone)} item(s): {' '.join(map(str, gone))}")

    @app.command("export")
    def export_cmd(
        dest: Path = typer.Argument(..., help="the .npz file to write (missing parent folders are created)"),
        collection: Path = COLLECTION_OPT,
        modality: Optional[str] = typer.Option(None, help="image or text (default: both)"),
        force: bool = typer.Option(False, "--force", help="overwrite an existing DEST"),
        as_json: bool = typer.Option(False, "--json", help="JSON output"),
    ) -> None:
        """Write a collection's vectors and item metadata to one .npz file for other tools.

        Arrays: ids, modality, keys, paths, texts, pair_ids, labels (JSON), vectors (float32,
        or packed uint8 codes), fvecs (if stored) and info (JSON). Load with numpy.load. Missing
        folders above DEST are created; an existing DEST is refused unless --force."""
        from ..index import CollectionError

        if modality not in (None, "image", "text"):
            _fail(f"--modality must be image or text, got {modality!r}")
        from .._fs import blocking_file

        try:
            is_dir, exists = dest.is_dir(), dest.exists()
            # a path under a file (afile/x.npz): mkdir would say only "File exists"
            above = blocking_file(dest)
        except OSError as exc:  # a name too long for the file system
            _fail(_os_words(exc, dest))
        if is_dir:
            _fail(f"{dest}: is a folder; give the .npz file to write")
        if exists and not force:
            _fail(f"{dest}: already exists; add --force to overwrite it")
        if above is not None:
            _fail(f"{dest}: cannot be written: {above} is a file")
        coll = _open(collection)
        try:
            counts = coll.export(dest, modality=modality)
        except (ValueError, CollectionError) as exc:
            _fail(str(exc))
        except OSError as exc:
            _fail(f"{dest}: {exc.strerror or exc}")
        if as_json:
            typer.echo(json.dumps({"file": str(dest), "collection": str(collection), "images": counts["image"],
                                   "texts": counts["text"], "output": coll.kind, "dim": coll.dim}))
            return
        typer.echo(f"{dest}: {counts['image']} images, {counts['text']} texts, {coll.kind} {coll.dim}-d")

    @app.command("snapshot")
    def snapshot_cmd(
        dest: Path = typer.Argument(..., help="new folder for the copy (outside the collection)"),
        collection: Path = COLLECTION_OPT,
        keys: bool = typer.Option(False, "--keys", help="keep the API keys and the audit log"),
        as_json: bool = typer.Option(False, "--json", help="JSON output"),
    ) -> None:
        """Copy a collection consistently, to ship or serve read-only elsewhere.

        Writers wait meanwhile; the copy's database is one self-contained file. API keys and
        the audit log stay behind unless --keys."""
        from ..index import CollectionError

        real, inside = dest.expanduser().resolve(), collection.expanduser().resolve()
        if real == inside or inside in real.parents:
            # the copy would sit in the collection's own folder (and be copied into the next one)
            _fail(f"{dest}: is inside the collection {collection}; snapshot to a folder outside it")
        coll = _open(collection)
        try:
            coll.snapshot(dest, keys=keys)
        except CollectionError as exc:
            _fail(str(exc))
        except OSError as exc:  # under a file, a folder that cannot be written
            _fail(f"{dest}: {exc.strerror or exc}")
        s = _open(dest, read_only=True).stats()
        if as_json:
            typer.echo(json.dumps({"snapshot": str(dest), "collection": str(collection), "images": s["images"],
                                   "texts": s["texts"], "space": s["space"], "keys": keys}))
            return
        typer.echo(f"{dest}: {s['images']} images, {s['texts']} texts, space {s['space']}")

    @app.command("serve")
    def serve_cmd(
        collection: Path = COLLECTION_OPT,
        host: str = typer.Option("127.0.0.1", help="interface to listen on"),
        port: int = typer.Option(8000, min=0, max=65535, help="port (0: any free one)"),
        max_upload_mb: float = typer.Option(20.0, callback=_positive, help="largest accepted request body, MiB (> 0)"),
        faiss_threads: int = typer.Option(1, min=1, help="OpenMP threads per FAISS search; 1 suits a server "
                                          "answering one query per request (requests run in parallel)"),
        shard: list[str] = typer.Option([], "--shard", help="URL of another `xmodal serve` of the same "
                                        "common space: searches cover it too (repeatable)"),
        shard_api_key: list[str] = typer.Option([], "--shard-api-key", envvar="XMODAL_SHARD_API_KEY",
                                                help="API key this server sends to the --shard servers, or "
                                                "URL=KEY for one of them (repeatable: a key belongs to "
                                                "one collection)"),
        shard_timeout: float = typer.Option(30.0, "--shard-timeout", min=0.1,
                                            help="seconds a --shard server has to answer; a slower "
                                            "one is left out of that answer (failed_shards)"),
        read_only: bool = typer.Option(False, "--read-only", help="refuse every write (adding, deleting, "
                                       "keys, settings); automatic where the folder is not writable"),
        rate_limit: Optional[int] = typer.Option(None, "--rate-limit", min=1,
                                                 help="API requests a minute per client address; past it "
                                                 "429 with Retry-After (off by default; behind a reverse "
                                                 "proxy every client has the proxy's address: limit there)"),
    ) -> None:
        """Serve the HTTP API and the web page (http://HOST:PORT/, schema at /docs)."""
        import faiss
        import uvicorn

        from ..index import CollectionError
        from ..index.shards import shard_keys
        from ..service import create_app

        faiss.omp_set_num_threads(max(1, faiss_threads))

        try:
            # --read-only beside a writer (a server taking uploads, an indexing run): follow it
            coll = _open(collection, read_only=True if read_only else None, follow=read_only, keep_open=True)
            # a plugin method not loaded, or a damaged method file: fail now, not on every search
            coll.method  # noqa: B018  (a CollectionError naming the file and the cure)
            # after the collection's own refusals (they say more), before the app starts anything
            _check_port(host, port)
            if coll.read_only:
                typer.echo(f"{collection}: serving read-only (writes answer 403)", err=True)
            shard_keys(shard, shard_api_key or None, "--shard-api-key")  # its errors name the option
            app_ = create_app(coll, max_upload_bytes=int(max_upload_mb * 1024 * 1024),
                              shards=shard, shard_api_key=shard_api_key or None, shard_timeout=shard_timeout, rate_limit=rate_limit)
        except CollectionError as exc:
            _fail(str(exc))
        uvicorn.run(app_, host=host, port=port, log_level="info")

    keys = typer.Typer(no_args_is_help=True, help="API keys (roles read, write, admin) and access settings.")
    app.add_typer(keys, name="keys")

    @keys.command("add")
    def keys_add(collection: Path = COLLECTION_OPT,
                 role: str = typer.Option(..., help="read, write or admin"),
                 name: str = typer.Option("", help="who or what the key is for"),
                 as_json: bool = typer.Option(False, "--json", help="JSON output (the token included, "
                                              "shown this once)")) -> None:
        """Create a key; the token is printed once (only its salted hash is stored)."""
        from ..service.auth import PREFIX, KeyError_, create_key

        from ..index import ReadOnlyError

        try:
            token = create_key(_open(collection), role, name, actor="cli")
        except (KeyError_, ReadOnlyError) as exc:
            _fail(str(exc))
        if as_json:
            key_id = token[len(PREFIX):].partition("_")[0]
            typer.echo(json.dumps({"key_id": key_id, "role": role, "name": name, "token": token}))
            return
        typer.echo(token)

    @keys.command("list")
    def keys_list(collection: Path = COLLECTION_OPT,
                  as_json: bool = typer.Option(False, "--json", help="JSON output: a list of key records")) -> None:
        """List keys (ids, names, roles; never secrets)."""
        from ..service.auth import list_keys

        rows = list_keys(_open(collection))
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        for r in rows:
            state = "revoked" if r["revoked"] else "active"
            typer.echo(f"{r['key_id']}\t{r['role']}\t{state}\t{r['name']}")

    @keys.command("revoke")
    def keys_revoke(key_id: str = typer.Argument(...), collection: Path = COLLECTION_OPT,
                    as_json: bool = typer.Option(False, "--json", help='JSON output: {"key_id", "revoked"}')) -> None:
        """Revoke a key by id."""
        from ..service.auth import KeyError_, revoke_key

        from ..index import ReadOnlyError

        try:
            revoke_key(_open(collection), key_id, actor="cli")
        except (KeyError_, ReadOnlyError) as exc:
            _fail(str(exc))
        typer.echo(json.dumps({"key_id": key_id, "revoked": True}) if as_json else f"revoked {key_id}")

    @keys.command("public-read")
    def keys_public(value: bool = typer.Argument(..., help="true: searching needs no key"),
                    collection: Path = COLLECTION_OPT,
                    as_json: bool = typer.Option(False, "--json", help='JSON output: {"public_read"}')) -> None:
        """Turn key-less reading (search, thumbnails) on or off."""
        from ..index import ReadOnlyError

        try:
            _open(collection).set_setting("public_read", value, actor="cli")
        except ReadOnlyError as exc:
            _fail(str(exc))
        typer.echo(json.dumps({"public_read": value}) if as_json else f"public_read = {value}")
