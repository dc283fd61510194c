"""What a practitioner met first-hand while using the search engine (each test failed before
its fix)."""

import numpy as np

from xmodal.index import Collection


def test_hash_index_answers_k_hits_when_the_collection_holds_them(tmp_path):
    # A multi-hash index (BHash2x16) only finds codes sharing a whole 16-bit sub-code with
    # the query: on a small collection most queries found nothing, so `xmodal search` printed
    # no result at all. The flat index now tops up a query the approximate index answers short.
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(60, 4), dtype=np.uint8)
    coll = Collection.create(tmp_path / "c.xmc", output="binary", dim=32, index="BHash2x16")
    coll.add_vectors("image", [f"i{j}" for j in range(60)], codes)
    q = rng.integers(0, 256, size=4, dtype=np.uint8)
    exact = coll.search_vector(q, "image", 5, exact=True)
    hits = coll.search_vector(q, "image", 5)
    assert [h.id for h in hits] == [h.id for h in exact]
    # a query that does share a sub-code keeps the hash index's answer (its own code first)
    own = coll.search_vector(codes[7], "image", 5)
    assert len(own) == 5 and own[0].key == "i7" and own[0].score == 1.0
    # deleted items stay out of the topped-up answer
    coll.delete(ids=[exact[0].id])
    again = coll.search_vector(q, "image", 5)
    assert len(again) == 5 and exact[0].id not in {h.id for h in again}
    coll.close()


def test_a_writer_waiting_for_another_says_so(tmp_path, caplog):
    # A second `xmodal index` on a collection being indexed hung without a word until the
    # first one finished.
    import fcntl
    import logging
    import threading

    coll = Collection.create(tmp_path / "c.xmc", dim=4)
    done = threading.Event()
    with open(tmp_path / "c.xmc" / "write.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # "the other process"
        with caplog.at_level(logging.WARNING):
            t = threading.Thread(target=lambda: (coll.add_vectors("image", ["a"], np.ones((1, 4))), done.set()))
            t.start()
            t.join(1.0)
            assert not done.is_set()  # still waiting
            fcntl.flock(fh, fcntl.LOCK_UN)
            t.join(10)
    assert done.is_set() and coll.count("image") == 1
    assert "waiting for another process writing" in caplog.text
    coll.close()
