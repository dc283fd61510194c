"""The web page in a real headless browser (Debian's chromium driven by Playwright): type a
query, upload and drop an image, mark feedback, click through, open a shared URL."""

from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from conftest import free_port, need_browser, served_ucm_collection, serving


pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    with served_ucm_collection(tmp_path_factory, "browser") as srv:  # 14 images, 14 classes
        yield srv


def test_text_query_upload_feedback_and_share(server, browser):
    page = browser.new_page(bypass_csp=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server["url"] + "/")
    # Type a query: a grid of image results with loaded thumbnails and captions.
    page.fill("#q", "many airplanes parked at the airport")
    page.press("#q", "Enter")
    page.wait_for_selector(".card")
    page.wait_for_function("document.querySelector('#status').textContent.includes('images for')")
    cards = page.locator(".card")
    assert cards.count() == 14
    page.wait_for_function("[...document.querySelectorAll('.card img')].slice(0, 3)"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    top_caption = cards.nth(0).locator(".caption").inner_text()
    assert top_caption.strip()
    assert "q=many+airplanes" in page.url
    # Upload an image: caption results, among them the image's own captions.
    name = sorted(server["captions"])[3]
    page.set_input_files("#file", str(server["folder"] / name))
    page.wait_for_function("document.querySelector('#status').textContent.includes('captions for image')")
    shown = [t.strip() for t in page.locator(".card .caption").all_inner_texts()]
    own = set(server["captions"][name])  # distinct: repeated captions are shown once
    assert len(shown) == len(set(shown)) == 20
    assert shown[0] in own and sum(t in own for t in shown[:5]) >= min(3, len(own))
    # Thumbs up/down mark cards, land in the URL and refine the ranking.
    page.fill("#q", "green trees")
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelector('#status').textContent.includes('green trees')")
    before = page.locator(".card").evaluate_all("cs => cs.map(c => c.dataset.id)")
    page.locator(".card").nth(6).locator("button.up").click()
    page.locator(".card").nth(0).locator("button.down").click()
    assert "relevant" in page.locator(".card").nth(6).get_attribute("class")
    assert "nonrelevant" in page.locator(".card").nth(0).get_attribute("class")
    assert page.locator("#feedback-bar").is_visible()
    assert f"rel={before[6]}" in page.url and f"nrel={before[0]}" in page.url
    page.click("#refine")
    page.wait_for_function(f"document.querySelector('.card').dataset.id !== '{before[0]}'")
    after = page.locator(".card").evaluate_all("cs => cs.map(c => c.dataset.id)")
    assert after.index(before[6]) < 6
    # Click a result: search by that item.
    clicked = after[2]
    page.locator(".card").nth(2).locator("img").click()
    page.wait_for_function(f"document.querySelector('#status').textContent.includes('item {clicked}')")
    assert f"item={clicked}" in page.url
    assert clicked not in page.locator(".card").evaluate_all("cs => cs.map(c => c.dataset.id)")
    # Drag and drop an image file onto the drop zone.
    page.evaluate("""async () => {
        const blob = await (await fetch(document.querySelector('.card img').src)).blob();
        const dt = new DataTransfer();
        dt.items.add(new File([blob], 'dropped.jpg', {type: 'image/jpeg'}));
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""")
    page.wait_for_function("document.querySelector('#status').textContent.includes('dropped.jpg')")
    assert page.locator(".card").count() == 20
    assert not errors, errors
    page.close()


def test_shared_url_restores_the_query(server, browser):
    page = browser.new_page(bypass_csp=True)
    page.goto(server["url"] + "/#q=a+river+with+trees&k=5&target=image")
    page.wait_for_function("document.querySelectorAll('.card').length === 5")
    assert page.input_value("#q") == "a river with trees"
    assert page.input_value("#target") == "image"
    assert page.input_value("#k") == "5"
    # a private collection: the page reports the refusal until a key is given
    server["coll"].set_setting("public_read", False)
    try:
        page.reload()
        page.wait_for_function("document.querySelector('#status').textContent.includes('401')")
        from xmodal.service.auth import create_key

        token = create_key(server["coll"], "read", "browser")
        assert page.evaluate("document.querySelector('#key-box').open")  # opened by the 401
        page.fill("#api-key", token)
        page.press("#api-key", "Tab")
        page.wait_for_function("document.querySelectorAll('.card').length === 5")
        page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
    finally:
        server["coll"].set_setting("public_read", True)
    page.close()


def test_link_followed_after_an_image_search_is_searched(server, browser):
    """After an image upload, a shared link opened in the same tab (or Back to an earlier
    search) changed the URL but the page kept showing the image's results."""
    page = browser.new_page(bypass_csp=True)
    page.goto(server["url"] + "/")
    name = sorted(server["captions"])[2]
    page.set_input_files("#file", str(server["folder"] / name))
    page.wait_for_function("document.querySelector('#status').textContent.includes('captions for image')")
    page.evaluate("location.hash = '#q=a+river+with+trees&k=4&target=image'")
    page.wait_for_function("document.querySelector('#status').textContent.includes('a river with trees')")
    assert page.locator(".card").count() == 4
    assert page.input_value("#q") == "a river with trees"
    page.close()


def test_router_page_shows_remote_shard_hits(server, browser, tmp_path):
    """`xmodal serve --shard URL`: remote hits show their server and its thumbnails, and are
    not clickable (their ids are the other server's)."""
    import shutil

    from xmodal.data import load_ucm_captions
    from xmodal.index import RemoteShard, build_collection
    from xmodal.service import create_app

    ds = load_ucm_captions()
    other = tmp_path / "other"
    other.mkdir()
    for i in range(75, ds.n_images, 300):  # images the first collection does not have
        src = Path(ds.image_paths[i])
        shutil.copy(src, other / src.name)
        (other / (src.stem + ".txt")).write_text(
            "\n".join(t for t, j in zip(ds.texts, ds.text_to_image) if j == i))
    with threadpool_limits(1):
        shard = build_collection(other, tmp_path / "shard.xmc", like=server["coll"].path, quiet=True)
        with serving(create_app(shard)) as shard_url, \
                serving(create_app(server["coll"], shards=[link := RemoteShard(shard_url)])) as router:
            page = browser.new_page(bypass_csp=True)
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(router + "/#q=airplanes+at+the+airport&k=21&target=image")
            page.wait_for_function("document.querySelectorAll('.card').length === 21")
            remote = page.locator(".card.remote")
            assert 0 < remote.count() < 21  # both collections answered
            host = shard_url.split("//")[1]
            assert all(t.endswith("@ " + host) for t in remote.locator(".score").all_inner_texts())
            assert remote.locator("button").count() == 0
            page.wait_for_function("[...document.querySelectorAll('.card.remote img')]"
                                   ".every(i => i.complete && i.naturalWidth > 0)")
            status = page.locator("#status").inner_text()
            remote.nth(0).locator("img").click()  # no "more like this" for another server's id
            page.wait_for_timeout(300)
            assert page.locator("#status").inner_text() == status
            # a shard that stops answering: the page says its results are missing
            link.url = f"http://127.0.0.1:{free_port()}"
            page.evaluate("location.hash = '#q=green+trees&k=5&target=image'")
            page.wait_for_function("document.querySelector('#status').textContent.includes('green trees')")
            status = page.locator("#status").inner_text()
            assert "not searched" in status and "127.0.0.1:" in status, status
            assert page.locator(".card.remote").count() == 0
            assert not errors, errors
            page.close()
    shard.close()
