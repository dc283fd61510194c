"""GPU check: the encoders and the PyTorch methods on CUDA against the same code on the CPU,
same run, same machine. Prints, and writes as JSON lines:

- encoders: CUDA features vs CPU features of the same images (smallest cosine, largest
  relative difference) and model-only throughput, CUDA / CPU;
- methods: test metrics and fit seconds of each deep method trained on CUDA (and, for the
  ``--both`` methods, on the CPU too, same seed): the two should agree to within run-to-run
  noise (GPU kernels are not bit-for-bit the CPU's), fit-time ratio CPU / CUDA;
- save/load: a model trained on CUDA, saved, then loaded with the device set to cpu gives
  the same embeddings.

Two steps, because the GPU machine has neither the data nor MiniLM:

    # here: a bundle of frozen features, a few images and their cached text features
    python benchmarks/device_check.py prepare --out .device
    # there (PYTHONPATH=src, XMODAL_CACHE=.device/cache):
    python benchmarks/device_check.py run --bundle .device --json out.jsonl

``--quick`` trains every method for 2 epochs (a dry run of the script on a CPU machine, with
``--devices cpu``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from xmodal import methods  # noqa: E402
from xmodal.data import PairedDataset, load_dataset  # noqa: E402
from xmodal.device import set_device  # noqa: E402
from xmodal.evaluation import evaluate  # noqa: E402
from xmodal.methods.deep import raw_view  # noqa: E402

RAW = ("transformer", "vsepp:text_model=gru")  # methods that read image files or caption strings
DEEP = "dcca,dccae,corr_ae,acmr,dscmr,vsepp,uwml,contrastive,graph"
HASHING = "dcmh,ssah,djsrh,jdsh,ucch"


# ------------------------------------------------------------------------------ prepare
def prepare(args: argparse.Namespace) -> None:
    """Features of the whole dataset (float16), plus a small raw subset (images + captions)
    whose MiniLM features and token outputs are cached, so the far side needs no MiniLM."""
    from xmodal.encoders import encode_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = encode_dataset(load_dataset(args.dataset), args.image_encoder, args.text_encoder, quiet=True)
    np.savez_compressed(
        out / "bundle.npz", image_features=ds.image_features.astype(np.float16),
        text_features=ds.text_features.astype(np.float16), text_to_image=ds.text_to_image,
        labels=ds.labels, **{f"split_{k}": v for k, v in ds.splits.items()})
    (out / "texts.json").write_text(json.dumps(ds.texts))
    # the raw subset: a few random images of each split, copied, with a Karpathy-style index
    rng = np.random.default_rng(0)
    quota = {"train": args.raw_images // 2, "val": args.raw_images // 4, "test": args.raw_images // 4}
    pick = {k: np.sort(rng.choice(ds.splits[k], min(n, len(ds.splits[k])), replace=False))
            for k, n in quota.items() if k in ds.splits}
    imgs = out / "imgs"
    imgs.mkdir(exist_ok=True)
    rows = []
    for split, ids in pick.items():
        for i in ids:
            src = Path(ds.image_paths[i])
            shutil.copyfile(src, imgs / src.name)
            caps = [ds.texts[j] for j in np.flatnonzero(ds.text_to_image == i)]
            rows.append({"file": src.name, "split": split, "label": int(ds.labels[i].argmax()),
                         "captions": caps})
    (out / "raw.json").write_text(json.dumps(rows))
    # cache the subset's MiniLM features and token outputs under out/cache (content-keyed):
    # one quick CPU run of each raw-input method asks for exactly the entries the far side will
    cache = out / "cache"
    os.environ["XMODAL_CACHE"] = str(cache)
    small = encode_dataset(raw_subset(out), "efficientnet-lite0", args.text_encoder,
                           cache_dir=cache, quiet=True)
    set_device("cpu")
    for name in RAW:
        base, params = parse_method(name)
        fit_eval(base, small, "cpu", {**params, "epochs": 1})
    # image features and regions are recomputed there, on the GPU
    for f in cache.rglob("*"):
        if f.is_file() and ("efficientnet" in str(f.parent.name) or f.name.startswith("regions_")):
            f.unlink()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"{out}: {ds.n_images} images' features, {len(rows)} raw images, {size / 2**20:.1f} MiB")


def raw_subset(root: Path) -> PairedDataset:
    rows = json.loads((root / "raw.json").read_text())
    t2i, texts, splits = [], [], {}
    for i, r in enumerate(rows):
        t2i += [i] * len(r["captions"])
        texts += r["captions"]
        splits.setdefault(r["split"], []).append(i)
    return PairedDataset("raw-subset", np.array(t2i), len(rows),
                         image_paths=[str(root / "imgs" / r["file"]) for r in rows], texts=texts,
                         labels=np.array([r["label"] for r in rows]), splits=splits)


def bundle(root: Path) -> PairedDataset:
    z = np.load(root / "bundle.npz")
    splits = {k[len("split_"):]: z[k] for k in z.files if k.startswith("split_")}
    return PairedDataset("bundle", z["text_to_image"], len(z["image_features"]),
                         image_features=z["image_features"].astype(np.float32),
                         text_features=z["text_features"].astype(np.float32),
                         texts=json.loads((root / "texts.json").read_text()),
                         labels=z["labels"], splits=splits)


# ------------------------------------------------------------------------------ run
def parse_method(name: str) -> tuple[str, dict]:
    """``"vsepp:text_model=gru;dim=256"`` -> ("vsepp", {"text_model": "gru", "dim": 256})."""
    base, _, rest = name.partition(":")
    params = {}
    for kv in filter(None, rest.split(";")):
        k, v = kv.split("=", 1)
        try:
            params[k] = json.loads(v)
        except json.JSONDecodeError:
            params[k] = v
    return base, params


def emit(rec: dict, fh) -> None:
    print(json.dumps(rec), flush=True)
    if fh:
        fh.write(json.dumps(rec) + "\n")
        fh.flush()


def check_encoders(root: Path, devices: list[str], fh) -> None:
    import torch

    from xmodal.encoders import get_encoder

    small = raw_subset(root)
    for spec in ("efficientnet-lite0", "efficientnet-lite0:d4"):
        feats, speed = {}, {}
        for dev in devices:
            set_device(dev)
            enc = get_encoder(spec, "image")
            feats[dev] = enc.encode(small.image_paths, batch_size=32, progress=False, cache_dir=False)
            load = enc.load_fn()
            batch = torch.from_numpy(np.stack([load(p) for p in small.image_paths[:32]]))
            enc.forward_batch(batch)  # warm-up (CUDA kernels, cuDNN autotune)
            reps = 3
            if dev != "cpu":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(reps):
                enc.forward_batch(batch)
            if dev != "cpu":
                torch.cuda.synchronize()
            speed[dev] = reps * len(batch) / (time.perf_counter() - t)
        rec = {"check": "encoder", "encoder": spec, "images_per_s": speed}
        if len(devices) == 2:
            a, b = (feats[d].astype(np.float64) for d in devices)
            cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
            rec["min_cosine"] = float(cos.min())
            rec["max_rel_diff"] = float(np.abs(a - b).max() / np.abs(a).max())
            rec["speedup"] = speed[devices[1]] / speed[devices[0]]
        emit(rec, fh)


def summary(res: dict) -> dict:
    out = {"i2t_map": res["i2t"].get("map"), "t2i_map": res["t2i"].get("map")}
    if "mR" in res:
        out["mR"] = res["mR"]
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items() if v is not None}


def fit_eval(name: str, ds: PairedDataset, dev: str, params: dict) -> tuple[object, dict, float]:
    set_device(dev)
    train, test = ds.subset("train"), ds.subset("test")
    val = ds.subset("val") if "val" in ds.splits else None
    m = methods.create(name, random_state=0, verbose=False, **params)
    t = time.perf_counter()
    m.fit(train, val=val)
    fit_s = time.perf_counter() - t
    view = raw_view(m, test)
    res = evaluate(view, test, train) if m.output == "binary" else evaluate(view, test)
    return m, summary(res), fit_s


def check_methods(ds: PairedDataset, names: list[str], both: set[str], devices: list[str],
                  quick: bool, deadline: float, fh) -> None:
    for name in names:
        if time.time() > deadline:
            emit({"check": "method", "method": name, "skipped": "time budget spent"}, fh)
            continue
        base, params = parse_method(name)
        if quick:
            params["epochs"] = 2
        if methods.create(base).output == "binary":
            params.setdefault("bits", 64)
        rec = {"check": "method", "method": name, "n_train": int(len(ds.splits["train"]))}
        for dev in (devices if base in both or len(devices) == 1 else devices[1:]):
            m, scores, fit_s = fit_eval(base, ds, dev, params)
            rec[dev] = {**scores, "fit_s": round(fit_s, 1)}
        if len(devices) == 2 and devices[0] in rec:
            rec["fit_speedup"] = round(rec[devices[0]]["fit_s"] / max(rec[devices[-1]]["fit_s"], 1e-9), 2)
        emit(rec, fh)


def check_save_load(ds: PairedDataset, devices: list[str], tmp: Path, fh) -> None:
    m, _, _ = fit_eval("acmr", ds, devices[-1], {"epochs": 3})
    test = ds.subset("test")
    a = m.encode_images(test.image_features)
    # a folder of its own under ``tmp``, removed after: no model file left behind, none shared
    # with another run
    with tempfile.TemporaryDirectory(dir=tmp, prefix="device_check_") as where:
        path = m.save(Path(where) / "acmr.xmodal")
        set_device(devices[0])
        b = methods.load(str(path)).encode_images(test.image_features)
    emit({"check": "save_load", "trained_on": devices[-1], "loaded_on": devices[0],
          "max_abs_diff": float(np.abs(a - b).max())}, fh)


def run(args: argparse.Namespace) -> None:
    import torch

    root = Path(args.bundle)
    missing = [f for f in ("bundle.npz", "texts.json", "raw.json") if not (root / f).is_file()]
    if missing:
        sys.exit(f"{root}: no {', '.join(missing)}; make the bundle first: "
                 f"python benchmarks/device_check.py prepare --out {root}")
    devices = args.devices.split(",")
    # Every device checked before anything runs: a machine without CUDA stops here, not mid-run.
    for dev in devices:
        try:
            set_device(dev)
        except Exception as exc:
            sys.exit(f"device {dev!r} is not usable here ({exc}); run this on a GPU machine, or "
                     f"--devices cpu --quick for a dry run of the script")
    set_device(None)
    os.environ.setdefault("XMODAL_CACHE", str(root / "cache"))
    fh = open(args.json, "w") if args.json else None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    emit({"check": "machine", "torch": torch.__version__, "gpu": gpu, "cpus": os.cpu_count()}, fh)
    check_encoders(root, devices, fh)
    deadline = time.time() + args.budget
    ds = bundle(root)
    names = [n for n in args.methods.split(",") if n]
    check_methods(ds, names, set(args.both.split(",")), devices, args.quick, deadline, fh)
    from xmodal.encoders import encode_dataset

    set_device(devices[-1])  # the image features of the raw subset, on the device under test
    small = encode_dataset(raw_subset(root), "efficientnet-lite0", "minilm", cache_dir=root / "cache",
                           quiet=True)
    check_methods(small, list(RAW), {parse_method(n)[0] for n in RAW}, devices, args.quick,
                  deadline + 120, fh)
    check_save_load(ds, devices, Path(args.tmp), fh)
    if fh:
        fh.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--dataset", default="ucm_captions")
    p.add_argument("--image-encoder", default="efficientnet-lite0")
    p.add_argument("--text-encoder", default="minilm")
    p.add_argument("--raw-images", type=int, default=96)
    p.add_argument("--out", default=".device")
    r = sub.add_parser("run")
    r.add_argument("--bundle", default=".device")
    r.add_argument("--devices", default="cpu,cuda", help="baseline,device (or one device)")
    r.add_argument("--methods", default=f"{DEEP},{HASHING}")
    r.add_argument("--both", default="acmr,contrastive,dcmh,transformer",
                   help="methods also trained on the baseline device")
    r.add_argument("--budget", type=float, default=420, help="seconds before methods are skipped")
    r.add_argument("--quick", action="store_true")
    r.add_argument("--json")
    r.add_argument("--tmp", default=tempfile.gettempdir(), help="where the saved model goes for a moment")
    args = ap.parse_args()
    prepare(args) if args.cmd == "prepare" else run(args)


if __name__ == "__main__":
    main()
