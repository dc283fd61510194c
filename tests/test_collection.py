"""Collections: build from a folder / pairs file / dataset.json with real encoders, reopen,
search both ways, incremental add (unchanged files cost nothing), replace, delete, labels,
stale-index rebuild, binary codes with float re-ranking and Rocchio feedback, the CLI."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import beach_images_plain_texts, collection_state, fake_image_files, labelled_photos, need, vector_collection
from xmodal.data import DataError, load_ucm_captions
from xmodal.index import Collection, CollectionError, ImageItem, build_collection, scan_source
from xmodal.index.build import _held_twice
from PIL import Image
from typer.testing import CliRunner
from xmodal.cli import app
import sqlite3
import faiss
from xmodal.index.collection import TextItem

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


def _unit(rng, n, d=4):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_held_twice_names_each_new_image_stored_before_under_another_key(tmp_path):
    # over 900 new images (two chunks of SQLite parameters); the earliest older twin is named
    rng = np.random.default_rng(0)
    files = tmp_path / "files"
    files.mkdir()

    def item(key, content):
        (files / key).write_bytes(content)
        return ImageItem(key, str(files / key))

    coll = Collection.create(tmp_path / "c", dim=4)
    old = [item(f"old{i}.jpg", b"old %d" % i) for i in range(20)] + [item("old_again.jpg", b"old 3")]
    coll.add_items(old, image_features=_unit(rng, len(old)))
    new = [item(f"new{i:04d}.jpg", b"new %d" % i) for i in range(950)]
    new[5] = item("new0005.jpg", b"old 3")      # twice before: old3 (the earlier) and old_again
    new[930] = item("new0930.jpg", b"old 11")   # in the second chunk
    new += [item("dup_a.jpg", b"fresh"), item("dup_b.jpg", b"fresh")]  # twins among the new only
    rep = coll.add_items(new, image_features=_unit(rng, len(new)))
    assert len(rep.ids) == len(new)
    assert _held_twice(coll, rep.ids) == [("new0005.jpg", "old3.jpg"), ("new0930.jpg", "old11.jpg")]
    assert _held_twice(coll, []) == []
    coll.close()


def test_relabelling_finds_items_stored_without_labels_and_with_other_ones(tmp_path):
    from xmodal.index.collection import TextItem

    rng = np.random.default_rng(1)
    coll = Collection.create(tmp_path / "c", dim=4)
    texts = [TextItem("bare", "a caption"), TextItem("cat", "another", labels=["cat"])]
    coll.add_items((), texts, text_features=_unit(rng, 2))
    again = [TextItem("bare", "a caption", labels=["dog", "cat"]), TextItem("cat", "another", labels=["cat"])]
    plan = coll.plan((), again)["text"]
    assert plan["relabelled"] == ["bare"] and plan["unchanged"] == 1
    rep = coll.add_items((), again)
    assert (rep.relabelled, rep.unchanged, rep.added) == (1, 1, 0)
    assert sorted(coll.get_item(coll.id_of("bare")).labels) == ["cat", "dog"]
    # given no labels: the stored ones stay; the same labels again: unchanged
    rep = coll.add_items((), [TextItem("bare", "a caption"), TextItem("cat", "another", labels=["cat"])])
    assert (rep.relabelled, rep.unchanged) == (0, 2)
    assert sorted(coll.get_item(coll.id_of("bare")).labels) == ["cat", "dog"]
    coll.close()


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


# ---------------------------------------------------------------- 3: a moved folder

def test_a_moved_folder_updates_the_stored_paths_without_re_encoding(tmp_path):
    from xmodal.index.build import scan_folder

    src = labelled_photos(tmp_path / "one", 3)
    coll = vector_collection(tmp_path / "mv.xmc", src)
    ids = sorted(h.id for h in coll.list_items("image"))
    moved = tmp_path / "two"
    shutil.move(str(src), str(moved))
    images, _ = scan_folder(moved)
    plan = coll.plan(images)
    assert sorted(plan["image"]["moved"]) == sorted(i.key for i in images)
    assert plan["image"]["unchanged"] == 0 and not plan["image"]["new"] and not plan["image"]["changed"]
    res = run("index", moved, "-c", tmp_path / "mv.xmc", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "images: 0 new, 0 changed (re-encoded), 3 moved (path updated, not re-encoded), 0 unchanged" \
        in res.output
    # no features given: a re-encode would need an encoder this collection does not have
    rep = coll.add_items(images)
    assert (rep.added, rep.replaced, rep.moved, rep.unchanged) == (0, 0, 3, 0)
    items = coll.list_items("image")
    assert sorted(h.id for h in items) == ids
    assert all(Path(h.path).is_file() and Path(h.path).is_relative_to(moved.resolve()) for h in items)
    assert coll.audit_log(1)[0]["action"] == "move"
    # the same again: unchanged, nothing written
    gen = coll._gen
    rep = coll.add_items(images)
    assert (rep.moved, rep.unchanged) == (0, 3) and coll._gen == gen
    assert coll.plan(images)["image"]["moved"] == []
    coll.close()


# ---------------------------------------------------------------- 8: unknown labels in Python
def test_python_searches_refuse_a_label_no_item_has(tmp_path):
    from xmodal.index.shards import UnknownLabelError, open_shards

    a = vector_collection(tmp_path / "a.xmc", labelled_photos(tmp_path / "one", 3))
    q = np.ones(4, dtype=np.float32)
    assert {h.labels[0] for h in a.search_vector(q, "image", 5, labels=["beach"])} == {"beach"}
    with pytest.raises(UnknownLabelError) as err:
        a.search_vector(q, "image", 5, labels=["beach", "airplan"])
    assert "'airplan'" in str(err.value) and "beach, forest" in str(err.value)
    with pytest.raises(UnknownLabelError):
        a.search_vectors(q[None], "image", 5, labels=["airplan"])
    with pytest.raises(UnknownLabelError):
        a.search_item(a.list_items("image")[0].id, 2, labels=["airplan"])
    assert a.search_vector(q, "image", 5, labels=["airplan"], check_labels=False) == []
    # refused before the query is encoded (this collection has no encoder at all)
    for search in (a.search_text, a.search_texts, a.search_image, a.search_images):
        with pytest.raises(UnknownLabelError):
            search("planes" if search == a.search_text else ["planes"], 5, labels=["airplan"])
    # shards: a label on one shard only is known; one on none is refused
    b_src = tmp_path / "two" / "photos" / "harbour"
    b_src.mkdir(parents=True)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(b_src / "h.png")
    b = vector_collection(tmp_path / "b.xmc", b_src.parent)
    a.close(), b.close()
    shards = open_shards([tmp_path / "a.xmc", tmp_path / "b.xmc"])
    hits = shards.search_vector(q, "image", 5, labels=["harbour"])
    assert [h.labels for h in hits] == [["harbour"]]
    with pytest.raises(UnknownLabelError, match="'airplan'"):
        shards.search_vector(q, "image", 5, labels=["airplan"])
    with pytest.raises(UnknownLabelError, match="'airplan'"):
        shards.search_text("planes", labels=["airplan"])
    shards.close()


def test_a_label_filter_given_as_a_number_means_the_label_as_stored(tmp_path):
    # labels are stored as text; the check compared sets and refused 3 though '3' is there
    from xmodal.index import Collection

    c = Collection.create(tmp_path / "n.xmc", dim=4)
    c.add_vectors("image", ["a", "b"], np.eye(2, 4, dtype=np.float32), labels=[["3"], ["cat"]])
    q = np.eye(1, 4, dtype=np.float32)[0]
    assert [h.key for h in c.search_vector(q, "image", 5, labels=[3])] == ["a"]


def test_an_upload_found_again_in_a_folder_leaves_no_copy_behind(tmp_path):
    # a photo uploaded over HTTP (files/<hash>) and later indexed from a folder under the same
    # key is moved to the folder's path; the upload copy, used by no item, goes as on a delete
    from xmodal.index import Collection
    from xmodal.index.collection import ImageItem

    c = Collection.create(tmp_path / "c.xmc", dim=4)
    (tmp_path / "A").mkdir()
    Image.new("RGB", (8, 8), (40, 40, 40)).save(tmp_path / "A" / "1.png")
    files = c.path / "files"
    files.mkdir(exist_ok=True)
    (files / "up1.png").write_bytes((tmp_path / "A" / "1.png").read_bytes())
    F = np.ones((1, 4), dtype=np.float32)
    c.add_items([ImageItem("u", str(files / "up1.png"))], image_features=F)
    r = c.add_items([ImageItem("u", str(tmp_path / "A" / "1.png"))], image_features=F)
    assert r.moved and not (files / "up1.png").exists()
    assert (tmp_path / "A" / "1.png").exists()  # the user's own file is never touched


def test_a_label_only_the_other_modality_has_is_refused_for_the_target(tmp_path):
    # a text search filtered by an image-only label passed the check (some item has it) and
    # answered nothing, silently: the check must count the searched modality's items only
    from xmodal.index.shards import UnknownLabelError

    c = beach_images_plain_texts(tmp_path / "m.xmc")
    q = np.eye(1, 4, dtype=np.float32)[0]
    assert [h.key for h in c.search_vector(q, "image", 5, labels=["beach"])] == ["b.jpg"]
    with pytest.raises(UnknownLabelError) as err:
        c.search_vector(q, "text", 5, labels=["beach"])
    assert "no text item has the label 'beach' (image items do)" in str(err.value)
    assert err.value.target == "text" and err.value.elsewhere == ["beach"] and err.value.known == []
    with pytest.raises(UnknownLabelError, match=r"'beach', 'airplan' \('beach': on image items only\)"):
        c.search_vectors(q[None], "text", 5, labels=["beach", "airplan"])
    with pytest.raises(UnknownLabelError, match="no text item has the label 'beach'"):
        c.search_item(c.id_of("t1"), 2, labels=["beach"])  # more like this: texts
    with pytest.raises(UnknownLabelError, match="no text item has the label 'beach'"):
        c.search_item(c.id_of("b.jpg"), 2, target="text", labels=["beach"])
    for search in (c.search_image, c.search_images):  # image -> text: refused before encoding
        with pytest.raises(UnknownLabelError, match="no text item has"):
            search("q.jpg" if search == c.search_image else ["q.jpg"], 5, labels=["beach"])
    for search in (c.search_text, c.search_texts):
        with pytest.raises(UnknownLabelError, match="no text item has"):
            search("sea" if search == c.search_text else ["sea"], 5, "text", labels=["beach"])
    c.check_labels(["beach"])  # no target: any item's label counts, as before
    c.check_labels(["beach"], "image")
    assert c.stats()["labels_by_target"] == {"image": ["beach", "forest"], "text": []}
    c.close()


def unit(rng, n, d=8):
    X = rng.standard_normal((n, d)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def moved_upload(tmp_path):
    """A collection whose item 'one' was uploaded at A.xmc (its path names A's files/), then
    moved to B.xmc, where the same bytes are uploaded again as item 'two' (path in B)."""
    data = b"\x89PNG same bytes"
    name = "ab" * 32 + ".png"
    A = tmp_path / "A.xmc"
    c = Collection.create(A, dim=8)
    (A / "files").mkdir()
    (A.resolve() / "files" / name).write_bytes(data)
    c.add_items([ImageItem("one", str(A.resolve() / "files" / name))], image_features=np.ones((1, 8), "f4"))
    c.close()
    B = tmp_path / "B.xmc"
    shutil.move(A, B)
    c = Collection.open(B)
    f = B.resolve() / "files" / name
    c.add_items([ImageItem("two", str(f))], image_features=np.ones((1, 8), "f4"))
    return c, f


def test_deleting_an_upload_keeps_the_file_an_item_of_the_moved_collection_uses(tmp_path):
    c, f = moved_upload(tmp_path)
    c.delete(keys=["two"])
    assert f.exists()  # 'one' still shows it
    assert c.uploads_in_use([f.name]) == {f.name}
    assert c.get_item(c.id_of("one")).path == str(f)
    c.delete(keys=["one"])
    assert not f.exists()  # now no item uses it
    assert c.uploads_in_use([f.name]) == set()
    c.close()


def test_a_snapshot_of_a_moved_collection_carries_its_uploads(tmp_path):
    c, f = moved_upload(tmp_path)
    c.delete(keys=["two"])
    snap = c.snapshot(tmp_path / "snap.xmc")
    c.close()
    with Collection.open(snap, read_only=True) as s:
        p = Path(s.get_item(s.id_of("one")).path)
        assert p == (snap / "files" / f.name).resolve() and p.read_bytes() == f.read_bytes()


def test_an_index_file_of_the_previous_build_is_not_trusted(tmp_path):
    """A rebuild restarts item ids: a file the previous database left in indexes/ (a process
    that wrote it late, an rsync of another build over the folder) holds other items' vectors
    under the same ids, and must not be caught up as if it were this database's."""
    rng = np.random.default_rng(3)
    d = tmp_path / "c"
    old = Collection.create(d, dim=8)
    old.add_vectors("image", [f"old{j}" for j in range(3)], unit(rng, 3))
    old.add_vectors("text", ["t"], unit(rng, 1))
    old.close()
    stale = {f.name: f.read_bytes() for f in (d / "indexes").glob("*.faiss")}
    new = Collection.create(d, dim=8, overwrite=True)  # the rebuild: more items than before
    X = unit(rng, 6)
    new.add_vectors("image", [f"new{j}" for j in range(6)], X)
    new.close()
    for f in (d / "indexes").glob("*.faiss"):  # the new files not written (yet), the old back
        f.unlink()
    for name, data in stale.items():
        (d / "indexes" / name).write_bytes(data)
    for read_only in (True, False):
        with Collection.open(d, read_only=read_only) as c:
            for j in range(6):
                hit = c.search_vector(X[j], "image", 1, exact=True)[0]
                assert hit.key == f"new{j}" and hit.score == pytest.approx(1.0, abs=1e-5)
    # the writable open wrote files of its own and removed the stale ones
    names = sorted(f.name for f in (d / "indexes").glob("*.faiss"))
    assert names and not set(names) & set(stale)


def test_an_older_collection_without_a_database_id_gets_one_when_opened_for_writing(tmp_path):
    rng = np.random.default_rng(4)
    d = tmp_path / "c"
    c = Collection.create(d, dim=8)
    X = unit(rng, 4)
    c.add_vectors("image", [f"k{j}" for j in range(4)], X)
    c.close()
    db = sqlite3.connect(d / "collection.db")
    db.execute("DELETE FROM meta WHERE key = 'db_id'")
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with Collection.open(d, read_only=True) as ro:  # files it cannot tell as its own: rebuilt
        assert ro._db_id is None
        assert ro.search_vector(X[1], "image", 1, exact=True)[0].key == "k1"
    with Collection.open(d) as w:
        db_id = w._db_id
        assert db_id and w.store.get_meta("db_id") == db_id
        assert w.search_vector(X[2], "image", 1, exact=True)[0].key == "k2"
    with Collection.open(d) as again:
        assert again._db_id == db_id
    assert all(f".{db_id}.g" in f.name for f in (d / "indexes").glob("*.faiss"))


def test_a_follower_follows_a_rebuild_beside_a_live_writer(tmp_path):
    """`serve --read-only` beside a writer: after a rebuild the new database has a live writer
    (its WAL not merged); the follower reopens it as a follower, not as an immutable file."""
    d = tmp_path / "c"
    c = Collection.create(d, dim=8)
    c.add_vectors("text", ["old"], np.ones((1, 8), "f4"))
    c.close()
    F = Collection.open(d, read_only=True, follow=True)
    assert not F.store.immutable and F.count("text") == 1
    W = Collection.create(d, dim=8, overwrite=True)  # the rebuild; its writer stays open
    W.add_vectors("text", ["new"], np.ones((1, 8), "f4"))
    assert Path(str(d / "collection.db") + "-wal").stat().st_size > 0
    F.refresh()
    assert [h.key for h in F.search_vector(np.ones(8, "f4"), "text", 5)] == ["new"]
    assert not F.store.immutable and F.read_only
    W.add_vectors("text", ["newer"], 2 * np.ones((1, 8), "f4"))  # and its later writes
    assert sorted(h.key for h in F.search_vector(np.ones(8, "f4"), "text", 5)) == ["new", "newer"]
    W.close()
    F.close()


def test_labels_given_as_one_string_are_refused_not_split_into_letters(tmp_path):
    rng = np.random.default_rng(0)
    c = Collection.create(tmp_path / "c", dim=8)
    (p,) = fake_image_files(tmp_path, 1)
    with pytest.raises(DataError, match=r"image 'x'.*labels.*'beach'"):
        c.add_items([ImageItem("x", p, labels="beach")], image_features=unit(rng, 1))
    with pytest.raises(DataError, match=r"text 't'.*labels"):
        c.add_items((), [TextItem("t", "a caption", labels="beach")], text_features=unit(rng, 1))
    assert c.count() == 0
    c.add_items([ImageItem("x", p, labels=("beach",))], image_features=unit(rng, 1))
    assert c.get_item(c.id_of("x")).labels == ["beach"]
    c.close()


@pytest.mark.parametrize("case", ["dup-across-batches", "image-and-text-key", "text-none",
                                  "features-rows", "bad-key-late", "label-not-str"])
def test_add_items_refuses_bad_items_before_writing_anything(tmp_path, case):
    """A bad item anywhere in a long add is refused naming it before any batch is encoded or
    committed (it used to commit the batches before it, or, for a key given twice in two
    batches, silently store the second as a replacement of the first)."""
    rng = np.random.default_rng(1)
    c = Collection.create(tmp_path / "c", dim=8)
    c.add_items([ImageItem("old", fake_image_files(tmp_path, 1)[0])], image_features=unit(rng, 1))
    before = collection_state(c)
    paths = fake_image_files(tmp_path, 5)
    images = [ImageItem(f"k{j}", p) for j, p in enumerate(paths)]
    texts = [TextItem("k0#0", "a caption", pair_key="k0")]
    Fi, Ft = unit(rng, 5), unit(rng, 1)
    if case == "dup-across-batches":
        images[4] = ImageItem("k0", paths[4])
        match = r"item key 'k0' appears twice"
    elif case == "image-and-text-key":
        texts = [TextItem("k3", "a caption", pair_key="k0")]
        match = r"item key 'k3' appears twice"
    elif case == "text-none":
        texts = [TextItem("k0#0", None, pair_key="k0")]
        match = r"text 'k0#0'.*text must be a string"
    elif case == "features-rows":
        Fi = unit(rng, 6)
        match = r"image_features has 6 rows for 5 images"
    elif case == "bad-key-late":
        images[4] = ImageItem("k4\n", paths[4])
        match = r"control characters"
    else:
        images[4] = ImageItem("k4", paths[4], labels=["ok", None])
        match = r"image 'k4'.*labels\[1\]"
    with pytest.raises(DataError, match=match):
        c.add_items(images, texts, image_features=Fi, text_features=Ft, batch_size=2)
    assert collection_state(c) == before
    c.close()


def test_a_path_like_image_path_is_stored_as_a_string(tmp_path):
    rng = np.random.default_rng(2)
    c = Collection.create(tmp_path / "c", dim=8)
    p = Path(fake_image_files(tmp_path, 1)[0])
    rep = c.add_items([ImageItem("x", p)], image_features=unit(rng, 1))
    assert rep.added == 1 and c.get_item(c.id_of("x")).path == str(p)
    # a rerun finds it unchanged (the same path, size and time as recorded)
    assert c.add_items([ImageItem("x", p)], image_features=unit(rng, 1)).unchanged == 1
    c.close()


def test_an_index_file_of_the_wrong_kind_is_rebuilt_not_trusted(tmp_path):
    """An index file that loads but is not that index (another variant's, another width):
    it used to stop the open with an IndexSpecError, or answer 'exact' searches from a graph."""
    rng = np.random.default_rng(5)
    d = tmp_path / "c"
    c = Collection.create(d, dim=8, index="HNSW8")
    X = unit(rng, 40)
    c.add_vectors("image", [f"k{j}" for j in range(40)], X)
    c.close()
    (flat,) = (d / "indexes").glob("image.flat.*.faiss")
    (approx,) = (d / "indexes").glob("image.approx.*.faiss")
    a, b = flat.read_bytes(), approx.read_bytes()
    flat.write_bytes(b)
    approx.write_bytes(a)
    for read_only in (True, False):
        with Collection.open(d, read_only=read_only) as c:
            assert c.indexes[("image", "flat")].is_flat
            assert isinstance(faiss.downcast_index(c.indexes[("image", "flat")].index.index), faiss.IndexFlat)
            for j in (0, 17, 39):
                hit = c.search_vector(X[j], "image", 1, exact=True)[0]
                assert hit.key == f"k{j}" and hit.score == pytest.approx(1.0, abs=1e-5)
                assert c.search_vector(X[j], "image", 1)[0].key == f"k{j}"


@pytest.mark.parametrize("bad, error, match", [
    (dict(index="NoSuchIndex"), "IndexSpecError", "cannot build FAISS index 'NoSuchIndex'"),
    (dict(output="nope"), "CollectionError", "output must be 'real' or 'binary', got 'nope'"),
    (dict(image_encoder="no-such-encoder"), "EncoderError", "unknown encoder 'no-such-encoder'"),
    (dict(dim=None), "CollectionError", "pass a fitted method or the vector dim")])
def test_a_refused_rebuild_leaves_the_old_collection(tmp_path, bad, error, match):
    """Collection.create(overwrite=True) deleted the old database before it checked its
    arguments: a typo in a rebuild's index spec or encoder lost the whole collection."""
    d = tmp_path / "c"
    c = Collection.create(d, dim=8)
    c.add_vectors("image", ["k"], np.ones((1, 8), np.float32))
    c.close()
    with pytest.raises(Exception, match=re.escape(match)) as exc:
        Collection.create(d, **{"dim": 8, "overwrite": True, **bad})
    assert type(exc.value).__name__ == error  # the refusal itself, not a crash on the way
    with Collection.open(d) as c:
        assert c.count() == 1 and c.id_of("k") is not None
    db = sqlite3.connect(d / "collection.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_removing_ids_that_are_not_integers_names_them(tmp_path):
    c = Collection.create(tmp_path / "c", dim=8)
    c.add_vectors("image", ["k"], np.ones((1, 8), np.float32))
    with pytest.raises(DataError, match=r"item id 'abc'"):
        c.delete(["abc"])
    for frac in (2.5, np.float32(1.5), np.float64(1.25)):  # NumPy floats were cut to 1, item 'k'
        with pytest.raises(DataError, match="not an integer"):
            c.delete([frac])
    assert c.count() == 1
    assert c.delete([123456, -1, 2**70]) == [] and c.count() == 1
    assert c.delete(keys=["caf\udce9.jpg", "nope"]) == [] and c.id_of("caf\udce9.jpg") is None
    c.close()


def test_a_collection_whose_stored_index_spec_is_now_refused_still_opens_and_answers_exactly(tmp_path, caplog):
    """A spec an older xmodal accepted (HNSW over PQ codes scores by L2, now refused) must not
    lock the user out of the collection: it opens, warns once naming the spec, and the flat
    index answers."""
    from xmodal.index.store import Store

    rng = np.random.default_rng(0)
    X = rng.standard_normal((50, 16)).astype(np.float32)
    with Collection.create(tmp_path / "c", output="real", dim=16, index="HNSW16") as c:
        c.add_vectors("image", [f"i{j}" for j in range(50)], X)
    with Collection.open(tmp_path / "c") as c, c.store.transaction() as conn:
        Store.set_meta(conn, "index", "HNSW32,PQ8")  # as an older version would have stored it
    with caplog.at_level("WARNING", logger="xmodal.index"):
        with Collection.open(tmp_path / "c") as c:
            hits = c.search_vector(X[7], "image", 3)
            c.add_vectors("image", ["new"], X[8:9] + 0.01)
    assert hits[0].key == "i7"
    warned = [r for r in caplog.records if "HNSW32,PQ8" in r.getMessage()]
    assert len(warned) == 1 and "flat" in warned[0].getMessage()


def test_an_add_while_the_approximate_index_waits_for_training_vectors_reads_no_vectors(tmp_path, monkeypatch):
    """IVF256 trains on 39 x 256 vectors; below that every write re-read the whole vectors
    table only for the index to refuse to train."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    with Collection.create(tmp_path / "c", output="real", dim=16, index="IVF256,Flat") as c:
        c.add_vectors("image", [f"i{j}" for j in range(300)], X)
        calls = []
        real = c.store.vectors
        monkeypatch.setattr(c.store, "vectors", lambda *a, **k: calls.append(a) or real(*a, **k))
        c.add_vectors("image", ["one"], X[:1] + 0.5)
        assert calls == []
        assert c.search_vector(X[3], "image", 1)[0].key == "i3"


def test_a_reader_catching_up_reads_no_vectors_while_the_approximate_index_waits_to_train(tmp_path, monkeypatch):
    """A server beside a writer caught up after each write by reading every stored vector,
    only for the untrained IVF index to refuse them again."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((300, 16)).astype(np.float32)
    with Collection.create(tmp_path / "c", output="real", dim=16, index="IVF64,Flat") as writer:
        writer.add_vectors("image", [f"i{j}" for j in range(300)], X)
        with Collection.open(tmp_path / "c") as reader:
            assert reader.search_vector(X[3], "image", 1)[0].key == "i3"
            calls = []
            real = reader.store.vectors
            monkeypatch.setattr(reader.store, "vectors", lambda *a, **k: calls.append(a) or real(*a, **k))
            for j in range(3):
                writer.add_vectors("image", [f"late{j}"], X[j:j + 1] + 0.5)
                assert reader.search_vector(X[j] + 0.5, "image", 1)[0].key == f"late{j}"
            assert calls == []


def _vectors(path, n=30, dim=8):
    X = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    with Collection.create(path, dim=dim) as c:
        c.add_vectors("image", [f"k{i}" for i in range(n)], X, labels=[["a"]] * n)
    return X


def test_a_search_racing_another_process_delete_still_answers_k(tmp_path):
    """Items deleted by another writer between the FAISS search and the item read used to be
    dropped, so a search over 29 items asked for 5 answered 3."""
    path = tmp_path / "c"
    X = _vectors(path)
    reader, writer = Collection.open(path), Collection.open(path)
    try:
        top = [h.id for h in reader.search_vector(X[0], "image", 5)]
        real = reader.search_vectors
        raced = []

        def racing(*a, **k):
            out = real(*a, **k)
            if not raced:  # the other process's delete lands right after the index answered
                raced.append(writer.delete(ids=top[:2]))
            return out

        reader.search_vectors = racing
        hits = reader.search_vector(X[0], "image", 5)
        assert len(hits) == 5 and not set(top[:2]) & {h.id for h in hits}
        # the batch path (one FAISS search for several queries) likewise
        top = [h.id for h in reader.search_vector(X[1], "image", 5)]
        raced.clear()
        batch = reader._search_rows((X[1:3], None), 5, "image", {})
        assert [len(r) for r in batch] == [5, 5]
    finally:
        reader.close()
        writer.close()


# ---------------------------------------------------------------------------- SQLite store
def _tables(db):
    import sqlite3

    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
    finally:
        con.close()


def test_a_store_of_another_format_is_not_given_this_versions_schema(tmp_path):
    # the schema was laid over any database before Collection.open read its format: a newer
    # xmodal's collection (here: one that dropped the deleted log) got this version's tables
    # and trigger back, written into it, before being refused
    import json
    import sqlite3

    from xmodal.index.store import SCHEMA_VERSION, Store

    db = tmp_path / "collection.db"
    s = Store(db)
    with s.transaction() as c:
        Store.set_meta(c, "format", SCHEMA_VERSION + 1)
        c.execute("DROP TRIGGER items_deleted")
        c.execute("DROP TABLE deleted")
    s.close()
    before = _tables(db)
    s = Store(db)
    assert s.get_meta("format") == SCHEMA_VERSION + 1
    s.close()
    assert _tables(db) == before and "deleted" not in before
    # this version's own format (and a new file) still gets the schema, older pieces included
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = ? WHERE key = 'format'", (json.dumps(SCHEMA_VERSION),))
    con.commit()
    con.close()
    Store(db).close()
    assert {"deleted", "items_deleted"} <= _tables(db)


def test_an_sqlite_file_of_another_program_is_refused_untouched(tmp_path):
    import sqlite3

    from xmodal.index.store import CollectionError, Store

    db = tmp_path / "collection.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    with pytest.raises(CollectionError, match="collection.db.*not an xmodal collection.*photos"):
        Store(db)
    assert _tables(db) == {"photos"}
    with pytest.raises(CollectionError, match="not an xmodal collection"):
        Store(db, read_only=True)
