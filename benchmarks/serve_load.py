"""Load test of `xmodal serve`: concurrent readers, writers over HTTP and a remover beside it.

    python benchmarks/serve_load.py COLLECTION [--requests 500] [--clients 6] [--adds 20] [--removes 5]

COLLECTION is any indexed collection with images (e.g. `xmodal index ucm_captions -c ucm.xmc`);
it is never changed: the test serves a snapshot of it in a temporary folder. It runs

1. a baseline: after one untimed request of each kind (model loading), one client sends
   BASELINE requests, every kind in turn, one at a time;
2. the load: CLIENTS concurrent clients send REQUESTS mixed requests (text search, image
   upload search, item search, label filters, thumbnails, /api/info, /health) while one more
   adds ADDS images over HTTP with a write key and another process runs `xmodal remove` for
   REMOVES images; after each add the new image must be found by a label-filtered search;
3. checks: no 5xx, the item counts are the expected ones, no key stored twice, every added
   item present and every removed one gone (over HTTP and in `xmodal stats --json`).

It prints p50/p95 latency per kind of request, under load and as a ratio to the baseline
(one machine's figures, indicative beside other jobs), errors by status, and the server's
resident memory (RSS) after the baseline, half-way and at the end of the load.
Exit status 1 when a check fails. Smoke size: `--requests 40 --adds 2 --removes 1 --baseline 10`.

Session 14, UCM-Captions (2,100 images, 10,500 captions, CCA, efficientnet-lite0 + minilm), one
encoder thread, 2 shared cores, 8 clients: 4,000 requests at 86/s with text queries encoded one
at a time (text p50 200 ms, 9.1x its p50 alone), 113/s with concurrent text queries encoded as
one batch (134 ms, 6.0x); no 5xx; RSS 600 MiB after the baseline, 750-780 MiB from 1,000 to
16,000 requests (no growth).
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

XMODAL = [sys.executable, "-m", "xmodal.cli"]
MARK = "loadtest"  # the label and caption word of the items this test adds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cli(*args: str, env: dict[str, str]) -> str:
    out = subprocess.run([*XMODAL, *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"xmodal {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def new_image(src: Path, i: int) -> bytes:
    """An image no collection holds yet: a stored one turned and tinted by the add's number."""
    with Image.open(src) as im:
        im = im.convert("RGB").rotate(90 * (1 + i % 3), expand=True)
    arr = np.asarray(im).astype(np.int16)
    arr[..., i % 3] = np.clip(arr[..., i % 3] + 7 + i, 0, 255)
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


async def all_items(client: httpx.AsyncClient) -> list[dict]:
    out: list[dict] = []
    while True:
        r = await client.get("/api/items", params={"offset": len(out), "limit": 1000})
        r.raise_for_status()
        got = r.json()["items"]
        if not got:
            return out
        out += got


KINDS = ["text", "text_label", "upload", "item", "item_label", "thumbnail", "info", "health"]


def make_requests(n: int, rng: random.Random, captions: list[str], image_ids: list[int],
                  image_paths: list[str], labels: list[str], cycle: bool = False) -> list[tuple[str, dict]]:
    """``n`` requests of random kinds (text and thumbnails twice as often), or with ``cycle``
    every kind in turn (the baseline: each kind gets its p50 alone)."""
    weighted = KINDS + ["text", "thumbnail"]
    reqs = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)] if cycle else rng.choice(weighted)
        if kind == "text":
            reqs.append((kind, {"method": "GET", "url": "/api/search",
                                "params": {"q": rng.choice(captions), "k": 20}}))
        elif kind == "text_label":
            reqs.append((kind, {"method": "GET", "url": "/api/search",
                                "params": {"q": rng.choice(captions), "k": 10,
                                           "labels": ",".join(rng.sample(labels, min(2, len(labels))))}}))
        elif kind == "upload":
            reqs.append((kind, {"method": "POST", "url": "/api/search/image", "upload": rng.choice(image_paths),
                                "data": {"k": "10"}}))
        elif kind == "item":
            reqs.append((kind, {"method": "POST", "url": "/api/search",
                                "json": {"item_id": rng.choice(image_ids), "k": 10, "target": "text"}}))
        elif kind == "item_label":
            reqs.append((kind, {"method": "POST", "url": "/api/search",
                                "json": {"item_id": rng.choice(image_ids), "k": 10, "target": "image",
                                         "labels": rng.sample(labels, 1)}}))
        elif kind == "thumbnail":
            reqs.append((kind, {"method": "GET", "url": f"/api/items/{rng.choice(image_ids)}/thumbnail",
                                "params": {"size": rng.choice([128, 256])}}))
        elif kind == "info":
            reqs.append((kind, {"method": "GET", "url": "/api/info"}))
        else:
            reqs.append((kind, {"method": "GET", "url": "/health"}))
    return reqs


async def send(client: httpx.AsyncClient, spec: dict, uploads: dict[str, bytes]) -> httpx.Response:
    spec = dict(spec)
    path = spec.pop("upload", None)
    if path is not None:
        spec["files"] = {"file": (Path(path).name, uploads[path], "image/jpeg")}
    method, url = spec.pop("method"), spec.pop("url")
    return await client.request(method, url, **spec)


async def run(args: argparse.Namespace, base: str, env: dict[str, str], coll: Path, token: str,
              server_pid: int) -> int:
    failures: list[str] = []
    rng = random.Random(0)
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        info0 = (await client.get("/api/info")).json()
        items = await all_items(client)
        images = [it for it in items if it["modality"] == "image"]
        captions = [it["text"] for it in items if it["modality"] == "text"]
        labels = sorted({lab for it in images for lab in it["labels"]}) or []
        if not labels:
            raise SystemExit(f"{args.collection}: no labelled images; the label filters need some")
        image_ids = [it["id"] for it in images]
        upload_paths = [it["path"] for it in rng.sample(images, min(30, len(images)))]
        uploads = {p: Path(p).read_bytes() for p in upload_paths}
        # the removed images are never queried by id: an item search for one is a 404 by design
        removed = rng.sample(image_ids, args.removes)
        queried = [i for i in image_ids if i not in set(removed)]

        # 0. warm-up, untimed: one request of each kind (the first text query loads the text
        # encoder, the first upload the image one: seconds a p50 alone must not include)
        for kind, spec in make_requests(len(KINDS), random.Random(2), captions, queried, upload_paths,
                                        labels, cycle=True):
            r = await send(client, spec, uploads)
            if r.status_code >= 400:
                failures.append(f"warm-up {kind}: {r.status_code} {r.text[:200]}")
        # 1. baseline: one client, every kind of request in turn
        base_lat: dict[str, list[float]] = defaultdict(list)
        for kind, spec in make_requests(args.baseline, random.Random(1), captions, queried, upload_paths, labels,
                                        cycle=True):
            t = time.perf_counter()
            r = await send(client, spec, uploads)
            base_lat[kind].append(time.perf_counter() - t)
            if r.status_code >= 400:
                failures.append(f"baseline {kind}: {r.status_code} {r.text[:200]}")
        rss = {"after baseline": rss_kib(server_pid)}

        # 2. the load, with an HTTP writer and a remover in another process
        queue: asyncio.Queue = asyncio.Queue()
        for req in make_requests(args.requests, rng, captions, queried, upload_paths, labels):
            queue.put_nowait(req)
        lat: dict[str, list[float]] = defaultdict(list)
        status: dict[int, int] = defaultdict(int)
        done = [0]
        last_read = [0.0]

        async def reader() -> None:
            async with httpx.AsyncClient(base_url=base, timeout=120) as c:
                while True:
                    try:
                        kind, spec = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    t = time.perf_counter()
                    try:
                        r = await send(c, spec, uploads)
                        code = r.status_code
                    except httpx.HTTPError as exc:
                        code, r = 0, None
                        failures.append(f"{kind}: {type(exc).__name__}: {exc}")
                    lat[kind].append(time.perf_counter() - t)
                    status[code] += 1
                    if code >= 400:
                        failures.append(f"{kind} {spec.get('url')}: {code} {r.text[:200] if r else ''}")
                    done[0] += 1
                    if done[0] % max(1, args.requests // 4) == 0:
                        rss[f"{done[0]} requests"] = rss_kib(server_pid)
                    last_read[0] = time.perf_counter()

        added: dict[str, int] = {}
        add_lat: list[float] = []

        async def writer() -> None:
            head = {"X-API-Key": token}
            async with httpx.AsyncClient(base_url=base, timeout=120, headers=head) as c:
                for i in range(args.adds):
                    key = f"{MARK}/{i:03d}.jpg"
                    data = new_image(Path(upload_paths[i % len(upload_paths)]), i)
                    t = time.perf_counter()
                    r = await c.post("/api/items", files={"file": (f"{i}.jpg", data, "image/jpeg")},
                                     data={"captions": f"{MARK} item {i} seen from above\n{MARK} number {i}",
                                           "labels": MARK, "key": key})
                    add_lat.append(time.perf_counter() - t)
                    status[r.status_code] += 1
                    if r.status_code != 201:
                        failures.append(f"add {key}: {r.status_code} {r.text[:200]}")
                        continue
                    added[key] = r.json()["id"]
                    # the new image is searchable at once: the label filter finds it
                    s = await c.post("/api/search", json={"item_id": added[key], "target": "image",
                                                          "labels": [MARK], "k": 100})
                    found = {h["id"] for h in s.json().get("results", [])} if s.status_code == 200 else set()
                    if s.status_code != 200 or not set(added.values()) - {added[key]} <= found:
                        failures.append(f"search after add {key}: {s.status_code}, sees {len(found)} of "
                                        f"{len(added) - 1} earlier added items")
                    await asyncio.sleep(0.05)

        remove_out: list[str] = []
        remove_end: list[float] = []

        def remover() -> None:
            for item_id in removed:
                p = subprocess.run([*XMODAL, "remove", "-c", str(coll), str(item_id), "--json"],
                                   capture_output=True, text=True, env=env)
                if p.returncode != 0:
                    failures.append(f"xmodal remove {item_id}: exit {p.returncode}: {p.stderr.strip()}")
                remove_out.append(p.stdout.strip())
                remove_end.append(time.perf_counter())

        rm_thread = threading.Thread(target=remover)
        t0 = time.perf_counter()
        rm_thread.start()
        await asyncio.gather(writer(), *(reader() for _ in range(args.clients)))
        await asyncio.to_thread(rm_thread.join)
        wall = time.perf_counter() - t0
        rss["end of load"] = rss_kib(server_pid)

        # 3. checks
        info1 = (await client.get("/api/info")).json()
        want_i = info0["images"] + len(added) - args.removes
        want_t = info0["texts"] + 2 * len(added) - sum(
            1 for it in items if it["modality"] == "text" and it.get("pair_id") in set(removed))
        if (info1["images"], info1["texts"]) != (want_i, want_t):
            failures.append(f"/api/info: {info1['images']} images, {info1['texts']} texts; "
                            f"expected {want_i}, {want_t}")
        after = await all_items(client)
        keys = [it["key"] for it in after]
        if len(keys) != len(set(keys)):
            failures.append(f"{len(keys) - len(set(keys))} keys stored twice")
        ids = [it["id"] for it in after]
        if len(ids) != len(set(ids)):
            failures.append("an id listed twice by /api/items")
        missing = sorted(set(added) - set(keys))
        if missing:
            failures.append(f"added but not listed: {missing}")
        back = sorted(set(removed) & set(ids))
        if back:
            failures.append(f"removed but still listed: {back}")
        for item_id in removed:
            if (await client.get(f"/api/items/{item_id}")).status_code != 404:
                failures.append(f"removed item {item_id} still answers")
        s = await client.get("/api/search", params={"q": f"{MARK} item seen from above", "k": 50,
                                                    "labels": MARK})
        if s.status_code != 200 or {h["id"] for h in s.json()["results"]} != set(added.values()):
            failures.append(f"label search for the added items: {s.status_code}, "
                            f"{len(s.json().get('results', []))} hits of {len(added)}")
        stats = json.loads(cli("stats", "-c", str(coll), "--json", env=env))["collections"][0]
        if (stats["images"], stats["texts"]) != (want_i, want_t):
            failures.append(f"xmodal stats: {stats['images']} images, {stats['texts']} texts; "
                            f"expected {want_i}, {want_t}")

    n = sum(len(v) for v in lat.values())
    print(f"{n} requests from {args.clients} clients in {last_read[0] - t0:.1f} s "
          f"({n / (last_read[0] - t0):.1f}/s), {len(added)} adds over HTTP, {len(remove_out)} "
          f"`xmodal remove` runs beside them ({sum(e < last_read[0] for e in remove_end)} "
          f"done before the last request; {wall:.1f} s in all)")
    print(f"{'request':<11} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'alone p50':>10} {'p50 ratio':>10}")
    for kind in sorted(lat):
        b = pct(base_lat.get(kind, []), 50)
        p50 = pct(lat[kind], 50)
        print(f"{kind:<11} {len(lat[kind]):>4} {p50:>8.1f} {pct(lat[kind], 95):>8.1f} {b:>10.1f} "
              f"{p50 / b if b == b and b > 0 else float('nan'):>10.2f}")
    if add_lat:
        print(f"{'add (HTTP)':<11} {len(add_lat):>4} {pct(add_lat, 50):>8.1f} {pct(add_lat, 95):>8.1f}")
    print("statuses:", dict(sorted(status.items())))
    print("server RSS (MiB):", ", ".join(f"{k} {v / 1024:.0f}" for k, v in rss.items()))
    if failures:
        print(f"{len(failures)} failures:")
        for f in failures[:30]:
            print("  " + f)
        return 1
    print("checks: no 5xx, counts as expected, no key twice, adds found by search, removals gone")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection", type=Path)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--adds", type=int, default=20)
    ap.add_argument("--removes", type=int, default=5)
    ap.add_argument("--baseline", type=int, default=60, help="requests sent one at a time first")
    args = ap.parse_args()
    for name in ("requests", "clients"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.baseline < len(KINDS):
        ap.error(f"--baseline must be at least {len(KINDS)} (one request of each kind), got {args.baseline}")
    for name in ("adds", "removes"):
        if getattr(args, name) < 0:
            ap.error(f"--{name} must be 0 or more, got {getattr(args, name)}")
    if not (args.collection / "collection.db").is_file():
        ap.error(f"{args.collection}: not a collection (no collection.db)")
    env = {**os.environ, "XMODAL_THREADS": os.environ.get("XMODAL_THREADS", "1"),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory() as tmp:
        coll = Path(tmp) / "copy.xmc"
        cli("snapshot", str(coll), "-c", str(args.collection), env=env)
        token = json.loads(cli("keys", "add", "-c", str(coll), "--role", "write", "--name", "load",
                               "--json", env=env))["token"]
        port = free_port()
        log = open(Path(tmp) / "server.log", "w")
        server = subprocess.Popen([*XMODAL, "serve", "-c", str(coll), "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    if httpx.get(base + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if server.poll() is not None:
                    raise SystemExit(f"server exited: {Path(tmp, 'server.log').read_text()[-2000:]}")
                time.sleep(0.2)
            code = asyncio.run(run(args, base, env, coll, token, server.pid))
        finally:
            server.terminate()
            server.wait(30)
            log.close()
        errors = [ln for ln in Path(tmp, "server.log").read_text().splitlines() if "Traceback" in ln]
        if errors:
            print(f"server log: {len(errors)} tracebacks")
            code = 1
        return code


if __name__ == "__main__":
    sys.exit(main())
