"""Collections: build from a folder / pairs file / dataset.json with real encoders, reopen,
search both ways, incremental add (unchanged files cost nothing), replace, delete, labels,
stale-index rebuild, binary codes with float re-ranking and Rocchio feedback, the CLI."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import need
from xmodal.data import DataError, load_ucm_captions
from xmodal.index import Collection, CollectionError, ImageItem, build_collection, scan_source

N_FIRST, N_LATER = 16, 4


@pytest.fixture(scope="module")
def ucm_records():
    need("ucm_captions")  # absent: skip; present but unreadable: an error, not a skip
    ds = load_ucm_captions()
    picks = list(range(0, 2100, 105))[: N_FIRST + N_LATER]  # one image from each class
    caps = {i: [] for i in picks}
    for t, i in zip(ds.texts, ds.text_to_image):
        if int(i) in caps:
            caps[int(i)].append(t)
    return [(Path(ds.image_paths[i]), caps[i], ds.label_names[int(ds.labels[i].argmax())]) for i in picks]


def write_folder(folder: Path, records, nested: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for src, caps, label in records:
        d = folder / label if nested else folder
        d.mkdir(exist_ok=True)
        shutil.copy(src, d / src.name)
        (d / (src.stem + ".txt")).write_text("\n".join(caps) + "\n")
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory, ucm_records, env):
    root = tmp_path_factory.mktemp("search")
    folder = write_folder(root / "imgs", ucm_records[:N_FIRST], nested=True)
    coll = build_collection(folder, root / "coll", image_encoder="efficientnet-lite0",
                            text_encoder="tfidf", quiet=True)
    yield root, folder, coll
    coll.close()


def test_build_and_search_both_directions(built, ucm_records):
    root, folder, coll = built
    assert coll.count("image") == N_FIRST and coll.count("text") == 5 * N_FIRST
    assert coll.stats()["method"] == "cca" and coll.kind == "real"
    # text -> image: a training caption finds its own image near the top
    ranks = []
    for src, caps, _ in ucm_records[:N_FIRST]:
        hits = coll.search_text(caps[0], k=N_FIRST)
        assert all(h.modality == "image" for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        ranks.append([Path(h.path).name for h in hits].index(src.name))
    assert np.mean(np.asarray(ranks) < 3) >= 0.75, ranks
    # image -> text: the image's own captions come first
    src, caps, _ = ucm_records[3]
    hits = coll.search_image(src, k=5)
    assert all(h.modality == "text" for h in hits)
    assert sum(h.text in caps for h in hits) >= 3
    assert hits[0].pair_id == coll.id_of(f"{ucm_records[3][2]}/{src.name}")


def test_supervised_method_uses_folder_labels(built, tmp_path):
    root, folder, _ = built
    coll = build_collection(folder, tmp_path / "sup", method="mlcca", image_encoder="efficientnet-lite0",
                            text_encoder="tfidf", quiet=True)
    assert coll.stats()["method"] == "mlcca" and coll.count("image") == N_FIRST
    coll.close()
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in sorted(folder.glob("*/*.jpg"))[:4]:
        shutil.copy(p, flat / p.name)
        shutil.copy(p.with_suffix(".txt"), flat / (p.stem + ".txt"))
    with pytest.raises(CollectionError, match="needs a label"):
        build_collection(flat, tmp_path / "sup2", method="mlcca", image_encoder="efficientnet-lite0",
                         text_encoder="tfidf", quiet=True)


def test_labels_filter_and_more_like_this(built, ucm_records):
    root, folder, coll = built
    label = ucm_records[5][2]
    hits = coll.search_text("a building", k=10, labels=[label])
    assert hits and all(label in h.labels for h in hits)
    assert all(label in h.labels for h in coll.search_image(ucm_records[0][0], k=10, labels=[label]))
    first = coll.list_items("image", limit=1)[0]
    similar = coll.search_item(first.id, k=5)
    assert first.id not in [h.id for h in similar] and all(h.modality == "image" for h in similar)
    assert all(h.modality == "text" for h in coll.search_item(first.id, k=5, target="text"))


def test_reopen_same_results(built, ucm_records):
    root, folder, coll = built
    q = ucm_records[2][1][1]
    before = [(h.id, round(h.score, 5)) for h in coll.search_text(q, k=8)]
    with Collection.open(root / "coll") as again:
        assert [(h.id, round(h.score, 5)) for h in again.search_text(q, k=8)] == before


def test_incremental_add_unchanged_replace_delete(tmp_path, ucm_records, env):
    folder = write_folder(tmp_path / "imgs", ucm_records[:8])
    coll = build_collection(folder, tmp_path / "c", image_encoder="efficientnet-lite0",
                            text_encoder="tfidf", quiet=True)
    gen = coll.store.generation()
    # Re-adding the same folder: no item is encoded, nothing is written.
    images, texts = scan_source(folder)
    enc = coll.encoder("image")
    before = enc.n_computed_total_
    rep = coll.add_items(images, texts)
    assert (rep.added, rep.replaced, rep.unchanged) == (0, 0, 8 + 40)
    assert enc.n_computed_total_ == before and coll.store.generation() == gen
    # New files: only they are added, through the collection's stored encoders.
    write_folder(folder, ucm_records[8:12])
    coll.close()
    coll = build_collection(folder, tmp_path / "c", quiet=True)
    assert coll.count("image") == 12 and coll.count("text") == 60
    new_src, new_caps, _ = ucm_records[10]
    # encoded through the stored encoders: the new image and its caption each find themselves
    # first (a CCA fitted on 8 pairs ranks a new class across modalities about as well as
    # chance, so the cross-modal rank is no check of the adding)
    assert Path(coll.search_image(new_src, k=1, target="image")[0].path).name == new_src.name
    assert coll.search_text(new_caps[0], k=1, target="text")[0].text == new_caps[0]
    # A changed file under the same key is replaced (new id, old one gone from the index).
    key = ucm_records[0][0].name
    old_id = coll.id_of(key)
    shutil.copy(ucm_records[15][0], folder / key)
    rep = coll.add_items([ImageItem(key=key, path=str(folder / key))])
    assert rep.replaced == 1 and coll.id_of(key) != old_id
    assert old_id not in [h.id for h in coll.search_image(folder / key, k=12, target="image")]
    # Deleting an image deletes its captions; no search returns them; reopening agrees.
    victim = coll.id_of(ucm_records[1][0].name)
    gone = coll.delete(ids=[victim])
    assert victim in gone and len(gone) == 6
    assert coll.count("image") == 11 and coll.count("text") == 55
    cap = ucm_records[1][1][0]
    assert victim not in [h.id for h in coll.search_text(cap, k=11)]
    assert not set(gone) & {h.id for h in coll.search_image(ucm_records[1][0], k=55)}
    coll.close()
    with Collection.open(tmp_path / "c") as again:
        assert again.indexes[("image", "flat")].ntotal == 11
        assert again.indexes[("text", "flat")].ntotal == 55
        assert victim not in [h.id for h in again.search_text(cap, k=11)]
        log = again.audit_log()
        assert {"add", "delete"} <= {e["action"] for e in log}


def test_pairs_file_and_karpathy_json(tmp_path, ucm_records, env):
    recs = ucm_records[:6]
    (tmp_path / "img").mkdir()
    rows = []
    for src, caps, label in recs:
        shutil.copy(src, tmp_path / "img" / src.name)
        rows += [{"image": f"img/{src.name}", "text": c, "label": label} for c in caps]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(r) for r in rows))
    c1 = build_collection(pairs, tmp_path / "c1", image_encoder="efficientnet-lite0",
                          text_encoder="tfidf", quiet=True)
    assert c1.count("image") == 6 and c1.count("text") == 30
    assert set(c1.stats()["labels"]) == {r[2] for r in recs}
    kdir = tmp_path / "karpathy"
    (kdir / "imgs").mkdir(parents=True)
    doc = {"dataset": "mini", "images": []}
    for src, caps, _ in recs:
        shutil.copy(src, kdir / "imgs" / src.name)
        doc["images"].append({"filename": src.stem + ".tif", "split": "train",
                              "sentences": [{"raw": c} for c in caps]})
    (kdir / "dataset.json").write_text(json.dumps(doc))
    c2 = build_collection(kdir / "dataset.json", tmp_path / "c2", image_encoder="efficientnet-lite0",
                          text_encoder="tfidf", quiet=True)
    assert c2.count("image") == 6 and c2.get_item(c2.id_of(recs[0][0].stem)).path.endswith(".jpg")
    c1.close()
    c2.close()


def index_names(path):
    """The index files in a collection, named without the database id (see the module doc)."""
    return sorted(re.sub(r"\.[0-9a-f]{16}\.g", ".g", f.name) for f in (Path(path) / "indexes").iterdir())


def test_stale_or_missing_index_files_are_rebuilt(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    with Collection.create(tmp_path / "c", dim=16, index="HNSW16") as c:
        c.add_vectors("image", [f"k{i}" for i in range(300)], X)
        c.delete(keys=["k0", "k1"])
    files = index_names(tmp_path / "c")
    # the text indexes, never changed, keep the files written when the collection was made
    assert files == ["image.approx.g2.faiss", "image.flat.g2.faiss", "text.approx.g0.faiss",
                     "text.flat.g0.faiss"]
    # A writer that committed and was killed before writing index files: the store's
    # generation moved on, the files are older and are caught up from the vectors table.
    import sqlite3
    db = sqlite3.connect(tmp_path / "c" / "collection.db")
    gone = db.execute("SELECT id FROM items WHERE key = 'k5'").fetchone()[0]
    db.execute("DELETE FROM items WHERE id = ?", (gone,))
    db.execute("UPDATE meta SET value = '3' WHERE key = 'generation'")
    db.commit()
    db.close()
    (tmp_path / "c" / "indexes" / "image.flat.g3.faiss.x.tmp").write_bytes(b"half a file")
    with Collection.open(tmp_path / "c") as c:
        assert c.indexes[("image", "flat")].ntotal == 297
        for variant in ("flat", "approx"):
            assert gone not in c.indexes[("image", variant)].ids()
        assert gone not in [h.id for h in c.search_vector(X[5], "image", 5)]
    files = index_names(tmp_path / "c")
    # small files are rewritten once caught up (as cheap as the catch-up); no temp file stays
    assert files == ["image.approx.g3.faiss", "image.flat.g3.faiss", "text.approx.g0.faiss",
                     "text.flat.g0.faiss"], files
    # A garbled current index file is rebuilt too.
    next((tmp_path / "c" / "indexes").glob("image.flat.*.g3.faiss")).write_bytes(b"garbage")
    with Collection.open(tmp_path / "c") as c:
        assert c.indexes[("image", "flat")].ntotal == 297
        assert c.search_vector(X[7], "image", 1)[0].key == "k7"


def test_reader_follows_another_writer(tmp_path):
    import fcntl
    import sqlite3

    X = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    Collection.create(tmp_path / "c", dim=8).close()
    reader, writer = Collection.open(tmp_path / "c"), Collection.open(tmp_path / "c")
    writer.add_vectors("image", [f"k{i}" for i in range(10)], X[:10])
    assert reader.search_vector(X[3], "image", 1)[0].key == "k3"  # caught up from the store
    writer.delete(keys=["k3"])
    assert reader.search_vector(X[3], "image", 1)[0].key != "k3"
    # While another process holds the write lock mid-run (an indexing run commits batch by
    # batch), the reader follows its commits: catching up costs the rows changed, not a reload.
    with open(tmp_path / "c" / "write.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        db = sqlite3.connect(tmp_path / "c" / "collection.db")
        db.execute("DELETE FROM items WHERE key = 'k4'")
        db.execute("UPDATE meta SET value = '99' WHERE key = 'generation'")
        db.commit()
        db.close()
        assert reader.refresh() is True
        assert reader.search_vector(X[4], "image", 1)[0].key != "k4"
        assert reader.indexes[("image", "flat")].ntotal == 8
        fcntl.flock(fh, fcntl.LOCK_UN)
    assert reader.refresh() is False and reader.search_vector(X[5], "image", 1)[0].key == "k5"
    reader.close()
    writer.close()


def test_binary_collection_rerank_and_feedback(tmp_path, ucm_records, env):
    from xmodal import methods

    assert "cca_itq" in methods.available("binary")  # built in: never a reason to skip
    folder = write_folder(tmp_path / "imgs", ucm_records[:12])
    coll = build_collection(folder, tmp_path / "c", method="cca_itq", image_encoder="efficientnet-lite0",
                            text_encoder="tfidf", index="BHNSW16", rerank=True, quiet=True)
    assert coll.kind == "binary" and coll.fdim
    src, caps, _ = ucm_records[4]
    plain = coll.search_image(src, k=10, rerank=0)
    reranked = coll.search_image(src, k=10)
    assert all(h.modality == "text" for h in plain + reranked)
    assert [h.score for h in reranked] == sorted((h.score for h in reranked), reverse=True)
    assert sum(h.text in caps for h in reranked) >= 2
    # Rocchio: marking one caption relevant pulls it (and its siblings) up.
    target = [h for h in coll.search_image(src, k=60) if h.text not in caps][-1]
    fb = coll.search_image(src, k=60, relevant=[target.id])
    assert [h.id for h in fb].index(target.id) < [h.id for h in coll.search_image(src, k=60)].index(target.id)
    coll.close()


def test_distinct_collapses_repeated_texts(tmp_path):
    rng = np.random.default_rng(3)
    V = rng.standard_normal((30, 8)).astype(np.float32)
    texts = [f"caption {i % 6}" for i in range(30)]  # every text five times
    with Collection.create(tmp_path / "c", dim=8) as c:
        c.add_vectors("text", [f"t{i}" for i in range(30)], V, texts=texts)
        plain = c.search_vector(V[0], "text", 10)
        uniq = c.search_vector(V[0], "text", 10, distinct=True)
        assert len(plain) == 10 and len({h.text for h in plain}) < 10
        assert len(uniq) == 6 and len({h.text for h in uniq}) == 6  # only six distinct exist
        assert uniq[0].text == plain[0].text == "caption 0"
        assert [h.score for h in uniq] == sorted((h.score for h in uniq), reverse=True)


def test_refusals(tmp_path):
    with pytest.raises(CollectionError, match="no collection"):
        Collection.open(tmp_path / "nothing")
    with pytest.raises(CollectionError, match="dim"):
        Collection.create(tmp_path / "x")
    c = Collection.create(tmp_path / "y", dim=4)
    with pytest.raises(CollectionError, match="already exists"):
        Collection.create(tmp_path / "y", dim=4)
    with pytest.raises(DataError, match="key"):
        c.add_vectors("image", [""], np.ones((1, 4)))
    with pytest.raises(DataError, match="paired image 'nope'"):
        c.add_vectors("text", ["t"], np.ones((1, 4)), texts=["x"], pair_keys=["nope"])
    with pytest.raises(CollectionError, match="text encoder"):
        c.search_text("hello")
    with pytest.raises(ValueError, match="k must be"):
        c.search_vector(np.ones(4), "image", 0)
    c.close()
    with pytest.raises(DataError, match="no images"):
        build_collection(tmp_path, tmp_path / "z", quiet=True)


def test_searches_are_not_blocked_while_a_write_encodes(tmp_path):
    import threading

    from PIL import Image

    X = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    coll = Collection.create(tmp_path / "c", dim=8)
    coll.add_vectors("image", [f"k{i}" for i in range(5)], X)
    release = threading.Event()
    inside = threading.Event()

    class GatedEncoder:  # stands in for a slow model: holds the write until the search is done
        spec, dim, modality, needs_fit = "gated", 8, "image", False

        def encode(self, items, **kw):
            inside.set()
            if not release.wait(20):
                raise RuntimeError("search did not finish while the write was encoding")
            return np.ones((len(items), 8), np.float32), np.ones(len(items), bool)

    coll._encoders["image"] = GatedEncoder()
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    writer = threading.Thread(target=coll.add_items, args=([ImageItem(key="x", path=str(tmp_path / "x.png"))],))
    writer.start()
    assert inside.wait(20)
    hits = coll.search_vector(X[2], "image", 1)  # would deadlock if the write held the index lock
    release.set()
    writer.join(20)
    assert hits[0].key == "k2" and not writer.is_alive() and coll.count("image") == 6
    coll.close()


def test_a_write_to_one_modality_does_not_rewrite_the_others_index(tmp_path, monkeypatch):
    """Adding a caption (POST /api/texts) or deleting one wrote every index file anew, the
    image index included: 0.7 s a caption at 100,000 images here, growing with the collection.
    An index the write left alone keeps its file (of an older generation: still usable)."""
    import xmodal.index.collection as collection_module

    written = []
    real_write = collection_module.atomic_write_bytes

    def recording(dest, data):
        written.append(".".join(Path(dest).name.split(".")[:2]))  # modality.variant
        return real_write(dest, data)

    monkeypatch.setattr(collection_module, "atomic_write_bytes", recording)
    rng = np.random.default_rng(0)
    path = tmp_path / "c"
    with Collection.create(path, dim=16, index="HNSW16") as c:
        c.add_vectors("image", [f"i{j}" for j in range(300)], rng.standard_normal((300, 16)))
        c.add_vectors("text", ["t0"], rng.standard_normal((1, 16)))
        written.clear()
        c.add_vectors("text", ["t1"], rng.standard_normal((1, 16)))
        c.delete(keys=["t0"])
        assert written and all(w.startswith("text.") for w in written), written
        gen = c.store.generation()
        files = index_names(path)
        assert files == sorted([f"image.{v}.g1.faiss" for v in ("flat", "approx")]
                               + [f"text.{v}.g{gen}.faiss" for v in ("flat", "approx")])
        written.clear()
        c.add_vectors("image", ["i-new"], rng.standard_normal((1, 16)))
        assert sorted(written) == ["image.approx", "image.flat"]  # a small file: rewritten
    with Collection.open(path) as c:  # the older text files load and catch up
        assert all(c.indexes[(m, v)].ids().size == c.count(m) for m in ("image", "text") for v in ("flat", "approx"))
        hit = c.search_vector(c.item_vectors([c.id_of("i7")])[0][0], "image", 1, exact=True)[0]
        assert hit.key == "i7"


def test_a_read_only_reader_follows_a_writer_that_starts_later(tmp_path):
    """`xmodal serve --read-only` opened the database as immutable: when a writer (an
    indexing run, a second server) later changed the file, the reader kept serving the old
    state, and once the writer's journal was merged it read pages changed under it."""
    rng = np.random.default_rng(0)
    path = tmp_path / "c"
    with Collection.create(path, dim=8) as c:
        c.add_vectors("image", [f"i{j}" for j in range(20)], rng.standard_normal((20, 8)))
    before = sorted(p.name for p in path.iterdir())
    with Collection.open(path, read_only=True) as reader:
        assert reader.count("image") == 20 and reader.search_vector(rng.standard_normal(8), "image", 3)
        assert sorted(p.name for p in path.iterdir()) == before  # opening wrote nothing
        with Collection.open(path) as writer:
            writer.add_vectors("image", [f"j{j}" for j in range(5)], rng.standard_normal((5, 8)))
            q = writer.item_vectors([writer.id_of("j3")])[0][0]
            assert reader.search_vector(q, "image", 1)[0].key == "j3"
            assert reader.count("image") == 25 and reader.read_only
        # the writer closed: its journal merged into the file the reader has open
        assert reader.search_vector(q, "image", 1)[0].key == "j3" and reader.count("image") == 25
