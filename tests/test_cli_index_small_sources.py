"""`xmodal index` on a practitioner's own small or changing folder, as docs/search-engine.md
walks through it: a source with too few readable captioned images to fit a common space, and
the "held twice" note of a rerun with --prune."""

from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from conftest import clean_exit, labelled_photos
from xmodal.cli import app


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_photo(root: Path, caption_lines: int = 1) -> Path:
    src = root / "photos"
    src.mkdir()
    Image.new("RGB", (16, 16), (40, 90, 200)).save(src / "a.png")
    (src / "a.txt").write_text("\n".join(f"a harbour at dusk {i}" for i in range(caption_lines)))
    return src


def test_one_captioned_image_is_refused_naming_the_source_before_fitting(tmp_path, env):
    # A pairs file whose second image was missing left one pair: CCA divided by n - 1 = 0 and
    # `xmodal index` died with a scipy traceback ("array must not contain infs or NaNs"), exit 1.
    src = one_photo(tmp_path)
    res = run("index", src, "-c", tmp_path / "c.xmc", "--text-encoder", "tfidf")
    clean_exit(res)
    assert f"{src}: only 1 captioned image to fit method 'cca' on" in res.output
    assert "at least 2" in res.output and "--method FILE" in res.output
    assert not (tmp_path / "c.xmc").exists()
    # said by --dry-run too, before anything is encoded
    dry = run("index", src, "-c", tmp_path / "c.xmc", "--dry-run")
    clean_exit(dry)
    assert "only 1 captioned image" in dry.output


def test_one_image_with_several_captions_is_refused_too(tmp_path, env):
    src = one_photo(tmp_path, caption_lines=3)
    res = run("index", src, "-c", tmp_path / "c.xmc", "--text-encoder", "tfidf")
    clean_exit(res)
    assert "only 1 captioned image to fit method 'cca' on" in res.output


def test_an_unreadable_image_that_leaves_one_pair_is_counted_in_the_refusal(tmp_path, env):
    src = one_photo(tmp_path)
    (src / "b.jpg").write_bytes(b"")  # empty: skipped and named
    (src / "b.txt").write_text("a beach\n")
    res = run("index", src, "-c", tmp_path / "c.xmc", "--text-encoder", "tfidf")
    clean_exit(res)
    assert "only 1 captioned image to fit method 'cca' on (1 unreadable image skipped)" in res.output
    assert not (tmp_path / "c.xmc").exists()


def test_prune_of_renamed_photos_does_not_say_they_are_held_twice(tmp_path, env):
    # A photo renamed (or moved to another sub-folder) and indexed with --prune: the run
    # noted "the collection holds them twice ... --rebuild" although the same run pruned
    # the old keys, so the collection held each photo once.
    src = labelled_photos(tmp_path, 4)
    coll = tmp_path / "c.xmc"
    assert run("index", src, "-c", coll, "--text-encoder", "tfidf", "-q").exit_code == 0
    for ext in ("png", "txt"):
        (src / "beach" / f"p1.{ext}").rename(src / "beach" / f"renamed.{ext}")
    res = run("index", src, "-c", coll, "--prune")
    assert res.exit_code == 0, res.output
    assert "pruned 2 item(s)" in res.output
    assert "same content" not in res.output
    # without --prune the old key stays: then the photo is held twice, and said so
    for ext in ("png", "txt"):
        (src / "forest" / f"p0.{ext}").rename(src / "forest" / f"again.{ext}")
    res = run("index", src, "-c", coll)
    assert res.exit_code == 0, res.output
    assert "1 new image(s) have the same content as images already stored under other keys" in res.output


def test_a_supervised_method_on_unlabelled_images_names_the_source_and_an_image(tmp_path, env):
    # "method 'scm' needs a label on every image" named neither the folder nor which image
    # had none: in a folder of sub-folders, the one photo left at the top.
    src = labelled_photos(tmp_path, 4)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(src / "loose.png")
    (src / "loose.txt").write_text("a photo at the top\n")
    res = run("index", src, "-c", tmp_path / "c.xmc", "--method", "scm", "--text-encoder", "tfidf")
    clean_exit(res)
    assert f"{src}: method 'scm' needs a label on every image; 1 of 5 has none (e.g. loose.png)" in res.output
