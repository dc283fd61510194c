"""The web page as a practitioner meets it (headless chromium driven by Playwright, as in
test_browser.py): label filters, keyboard and screen-reader use, a phone-width screen, long
and hostile captions, labels, file names and error messages (shown as text, never as HTML),
errors, slow and failed answers, bad shared links, and a routing server whose private shard's
thumbnails come through the router."""

import json
import shutil
from pathlib import Path

import httpx
import pytest
from threadpoolctl import threadpool_limits

from conftest import need_browser, serving, status, ucm_caption_folder, wait_status

XSS = '<img src=x onerror="window.__xss=1">'

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    from xmodal.index import build_collection
    from xmodal.service import create_app
    from xmodal.service.auth import create_key

    root, folder, captions, mp = ucm_caption_folder(tmp_path_factory, "browser_review", 150)
    with threadpool_limits(1):  # see test_collection.py
        coll = build_collection(folder, root / "coll", image_encoder="efficientnet-lite0",
                                text_encoder="tfidf", quiet=True)
        write = create_key(coll, "write", "review")
        with serving(create_app(coll)) as url:
            # hostile and long captions, added as a client would
            for text, labels in ((f"airplanes {XSS} parked", [f"<b>{XSS}</b>"]),
                                 ("airplanes " + "x" * 3000, []),
                                 ("airplanes near the harbour", ["harbour"]),
                                 ("airplanes " + " ".join(["runway"] * 1200), [])):
                r = httpx.post(url + "/api/texts", json={"text": text, "labels": labels},
                               headers={"X-API-Key": write})
                assert r.status_code == 201, r.text
            yield {"url": url, "folder": folder, "captions": captions, "coll": coll, "root": root}
    coll.close()
    mp.undo()


def test_hostile_text_is_shown_as_text_never_as_html(server, page, tmp_path):
    page.goto(server["url"] + "/#q=airplanes&target=text&k=50")
    wait_status(page, "captions for")
    caps = page.locator(".card .caption").all_inner_texts()
    assert any(XSS in c for c in caps), caps  # the markup, as characters
    labels = page.locator(".card .labels").all_inner_texts()
    assert any(f"<b>{XSS}</b>" in t for t in labels), labels  # labels are shown, as text
    # an uploaded file's name, and an error message that echoes a label filter
    bad = tmp_path / f"{XSS}.jpg"
    shutil.copy(server["folder"] / sorted(server["captions"])[0], bad)
    page.set_input_files("#file", str(bad))
    wait_status(page, XSS)
    page.fill("#labels", XSS)
    page.fill("#q", "airplanes")
    page.press("#q", "Enter")
    wait_status(page, "422")
    assert XSS in status(page)
    assert page.evaluate("window.__xss") is None
    assert page.locator("img[src='x']").count() == 0


def test_label_filter_is_sent_shared_and_checked(server, page):
    label = "harbour"  # the fixture's one caption with it
    page.goto(server["url"] + "/")
    page.fill("#q", "airplanes")
    page.fill("#labels", label)
    page.select_option("#target", "text")
    page.press("#q", "Enter")
    wait_status(page, "captions for")
    shown = page.locator(".card .labels").all_inner_texts()
    assert shown and all(label in t for t in shown), shown
    assert "labels=" in page.url
    # an image search keeps the filter
    page.set_input_files("#file", str(server["folder"] / sorted(server["captions"])[0]))
    wait_status(page, "labelled harbour")
    assert page.locator(".card .caption").all_inner_texts() == ["airplanes near the harbour"]
    # a shared link restores the filter; an unknown label is the server's 422, results cleared
    page.goto(server["url"] + "/#q=airplanes&labels=no-such-label")
    wait_status(page, "no-such-label")
    assert page.input_value("#labels") == "no-such-label"
    assert "422" in status(page) and page.locator(".card").count() == 0


def test_keyboard_and_accessible_names(server, page):
    page.goto(server["url"] + "/#q=green+trees&k=6&target=image")
    page.wait_for_function("document.querySelectorAll('.card').length === 6")
    # every control has a name a screen reader can say
    for role, name in (("searchbox", "Search text"), ("combobox", "Search among"),
                       ("spinbutton", "Number of results"), ("textbox", "Only labels")):
        assert page.get_by_role(role, name=name).count() == 1, (role, name)
    first = page.locator(".card").nth(0)
    assert first.locator("img").get_attribute("alt")
    up = first.locator("button.up")
    assert up.get_attribute("aria-label") == "relevant" and up.get_attribute("aria-pressed") == "false"
    up.focus()
    page.keyboard.press("Enter")
    assert up.get_attribute("aria-pressed") == "true"
    # "more like this" from the keyboard: the picture is a focusable button
    item = first.get_attribute("data-id")
    first.locator("img").focus()
    assert page.evaluate("document.activeElement.getAttribute('role')") == "button"
    page.keyboard.press("Enter")
    wait_status(page, f"item {item}")
    page.wait_for_function("document.activeElement.closest('#results') !== null")  # focus follows
    # the drop zone opens the file picker from the keyboard
    with page.expect_file_chooser(timeout=15000) as fc:
        page.focus("#drop")  # a round trip first: Playwright intercepts the chooser from then on
        page.keyboard.press("Enter")
    name = sorted(server["captions"])[1]
    fc.value.set_files(str(server["folder"] / name))
    wait_status(page, f"images for image {name}")  # target=image from the link


def test_phone_width_and_long_captions_do_not_break_the_layout(server, browser):
    page = browser.new_page(bypass_csp=True, viewport={"width": 360, "height": 740})
    page.goto(server["url"] + "/#q=airplanes+runway&target=text&k=60")
    wait_status(page, "captions for")
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    for box in page.locator(".card").evaluate_all("cs => cs.map(c => c.getBoundingClientRect().right)"):
        assert box <= 360
    # a caption of thousands of characters is cut short on its card, whole in its title
    heights = page.locator(".card .caption").evaluate_all("cs => cs.map(c => c.offsetHeight)")
    assert max(heights) < 150, max(heights)
    long = page.locator(".card .caption", has_text="x" * 100).first
    assert len(long.get_attribute("title")) > 3000
    page.set_viewport_size({"width": 1200, "height": 800})
    heights = page.locator(".card .caption").evaluate_all("cs => cs.map(c => c.offsetHeight)")
    assert max(heights) < 150, max(heights)
    page.close()


def test_errors_slow_and_failed_answers(server, page):
    page.goto(server["url"] + "/")
    # a late answer must not replace a newer one: the first search's answer is held back
    page.evaluate("""() => {
        const f = window.fetch; let n = 0;
        window.fetch = async (...a) => {
            const r = await f(...a);
            if (String(a[0]).includes('/api/search') && n++ === 0) await new Promise(ok => setTimeout(ok, 1500));
            return r;
        };
    }""")
    page.fill("#q", "airplanes")
    page.press("#q", "Enter")
    page.fill("#q", "green trees")
    page.press("#q", "Enter")
    wait_status(page, "green trees")
    page.wait_for_timeout(2000)
    assert "green trees" in status(page) and "airplanes" not in status(page)
    assert page.locator(".card").count() > 0
    # a 500 (JSON detail), a proxy's HTML 502, and a server that is gone
    page.route("**/api/search", lambda r: r.fulfill(status=500, content_type="application/json",
                                                    body=json.dumps({"detail": "internal server error (KeyError)"})))
    page.press("#q", "Enter")
    wait_status(page, "500")
    assert "KeyError" in status(page) and page.locator(".card").count() == 0
    page.unroute("**/api/search")
    page.route("**/api/search", lambda r: r.fulfill(status=502, content_type="text/html",
                                                    body=f"<html><h1>Bad gateway</h1>{XSS}</html>"))
    page.press("#q", "Enter")
    wait_status(page, "502")
    assert page.evaluate("window.__xss") is None
    page.unroute("**/api/search")
    page.route("**/api/search", lambda r: r.abort("connectionrefused"))
    page.press("#q", "Enter")
    wait_status(page, "server")
    assert "did not answer" in status(page), status(page)
    page.unroute("**/api/search")
    page.press("#q", "Enter")  # back up: searching works again
    wait_status(page, "images for")


def test_bad_shared_links_are_cleaned_not_sent(server, page):
    page.goto(server["url"] + "/#item=abc&rel=1,x&nrel=&k=zz")
    page.wait_for_timeout(500)
    assert "Error" not in status(page), status(page)
    assert "item=" not in page.url and "NaN" not in page.url
    page.goto(server["url"] + "/#q=green+trees&rel=1,x,2")
    wait_status(page, "green trees")
    assert "Error" not in status(page), status(page)
    assert "rel=1%2C2" in page.url, page.url


def test_private_collection_opens_the_key_box_and_missing_thumbnails(server, page):
    from xmodal.service.auth import create_key

    coll = server["coll"]
    coll.set_setting("public_read", False)
    try:
        page.goto(server["url"] + "/#q=green+trees&k=3&target=image")
        wait_status(page, "401")
        assert page.evaluate("document.querySelector('#key-box').open")
        page.fill("#api-key", "xmk_nope_nope")
        page.press("#api-key", "Enter")
        wait_status(page, "invalid or revoked")
        page.fill("#api-key", create_key(coll, "read", "review"))
        page.press("#api-key", "Enter")
        page.wait_for_function("document.querySelectorAll('.card').length === 3")
    finally:
        coll.set_setting("public_read", True)
    # a thumbnail that cannot be made (its file gone): a placeholder, not a broken image
    page.route("**/thumbnail*", lambda r: r.fulfill(status=404, content_type="application/json",
                                                    body='{"detail": "image file is gone"}'))
    page.evaluate("location.hash = '#q=airplanes&k=2&target=image'")
    page.wait_for_function("document.querySelectorAll('.card .noimg').length === 2")
    assert page.locator(".card img").count() == 0


def test_a_private_collections_thumbnails_show_without_a_key_in_any_url(server, browser):
    """The page sent its key as `?api_key=` in every thumbnail URL (into access logs, proxy
    logs, history); it now fetches them with the key header and shows them as blob: URLs, at
    the size the screen needs."""
    from xmodal.service.auth import create_key

    coll = server["coll"]
    page = browser.new_page(bypass_csp=True, device_scale_factor=2)
    urls = []
    page.on("request", lambda req: urls.append(req.url))
    coll.set_setting("public_read", False)
    try:
        page.goto(server["url"] + "/")
        page.evaluate("k => localStorage.setItem('xmodal-key', k)", create_key(coll, "read", "page"))
        page.goto(server["url"] + "/#q=green+trees&k=3&target=image")
        page.wait_for_function("[...document.querySelectorAll('.card img')].length === 3 && "
                               "[...document.querySelectorAll('.card img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        srcs = page.locator(".card img").evaluate_all("is => is.map(i => i.currentSrc)")
        assert all(u.startswith("blob:") for u in srcs), srcs
        thumbs = [u for u in urls if "/thumbnail" in u]
        assert len(thumbs) == 3 and all("size=512" in u for u in thumbs), thumbs
        assert not any("api_key" in u for u in urls), urls
    finally:
        coll.set_setting("public_read", True)
        page.close()


def test_the_page_works_under_its_own_csp(server, browser):
    """The page's Content-Security-Policy enforced (no bypass): a search shows its thumbnails,
    a private collection's too (blob: URLs), and the browser reports no violation. Waits use
    locators and evaluate, which the CSP allows (wait_for_function does not)."""
    import time

    from xmodal.service.auth import create_key

    coll = server["coll"]
    page = browser.new_page()
    violations = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: violations.append(str(e)))

    def thumbs_loaded(n):
        deadline = time.time() + 30
        while time.time() < deadline:
            if page.evaluate("() => [...document.querySelectorAll('.card img')]"
                             ".filter(i => i.complete && i.naturalWidth > 0).length") == n:
                return page.evaluate("() => [...document.querySelectorAll('.card img')].map(i => i.currentSrc)")
            time.sleep(0.1)
        raise AssertionError(page.locator("#status").inner_text())

    try:
        page.goto(server["url"] + "/#q=green+trees&k=3&target=image")
        assert all("/thumbnail" in u for u in thumbs_loaded(3))
        coll.set_setting("public_read", False)
        page.evaluate("k => localStorage.setItem('xmodal-key', k)", create_key(coll, "read", "csp"))
        page.goto(server["url"] + "/#q=airplanes&k=2&target=image")
        page.reload()
        assert all(u.startswith("blob:") for u in thumbs_loaded(2))
    finally:
        coll.set_setting("public_read", True)
        page.close()
    assert not violations, violations


def test_router_proxies_a_private_shards_thumbnails(server, browser, tmp_path):
    """A routing server's remote hits: the browser has the router's key, not the shard's, and a
    shard may not be reachable from the browser at all; the router fetches the thumbnail with
    the shard's key (`proxy_thumbnail`), behind the router's own read role."""
    from xmodal.data import load_ucm_captions
    from xmodal.index import build_collection
    from xmodal.service import create_app
    from xmodal.service.auth import create_key

    ds = load_ucm_captions()
    other = tmp_path / "other"
    other.mkdir()
    for i in range(75, ds.n_images, 400):
        src = Path(ds.image_paths[i])
        shutil.copy(src, other / src.name)
        (other / (src.stem + ".txt")).write_text(
            "\n".join(t for t, j in zip(ds.texts, ds.text_to_image) if j == i))
    coll = server["coll"]
    with threadpool_limits(1):
        shard = build_collection(other, tmp_path / "shard.xmc", like=coll.path, quiet=True)
    shard.set_setting("public_read", False)
    shard_key = create_key(shard, "read", "router")
    with serving(create_app(shard)) as shard_url, \
            serving(create_app(coll, shards=[shard_url], shard_api_key=shard_key)) as router:
        r = httpx.get(router + "/api/search", params={"q": "airplanes", "k": 30, "target": "image"})
        remote = [h for h in r.json()["results"] if h.get("shard")]
        assert remote and all(h["thumbnail"].startswith(shard_url) for h in remote)  # unchanged
        proxied = remote[0]["proxy_thumbnail"]
        assert proxied.startswith("/api/shards/0/items/") and shard_key not in r.text
        got = httpx.get(router + proxied)
        assert got.status_code == 200 and got.headers["content-type"] == "image/jpeg"
        assert got.content == httpx.get(remote[0]["thumbnail"], headers={"X-API-Key": shard_key}).content
        assert httpx.get(remote[0]["thumbnail"]).status_code == 401  # what the browser met
        assert httpx.get(router + "/api/shards/0/items/999999/thumbnail").status_code == 404
        assert httpx.get(router + "/api/shards/5/items/1/thumbnail").status_code == 404
        assert httpx.get(router + proxied + "?size=77").status_code == 422
        # the router's own read role guards the proxy
        coll.set_setting("public_read", False)
        try:
            assert httpx.get(router + proxied).status_code == 401
            token = create_key(coll, "read", "router-page")
            assert httpx.get(router + proxied, headers={"X-API-Key": token}).status_code == 200
        finally:
            coll.set_setting("public_read", True)
        page = browser.new_page(bypass_csp=True)
        page.goto(router + "/#q=airplanes&k=30&target=image")
        page.wait_for_function("document.querySelectorAll('.card.remote img').length > 0")
        page.wait_for_function("[...document.querySelectorAll('.card.remote img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        page.close()
    shard.close()


def test_add_an_image_with_captions_from_the_page(server, page, tmp_path):
    """The page adds an image and its captions with a write key; refusals are said as such
    (last in this file: it grows the shared collection)."""
    from xmodal.service.auth import create_key

    name = sorted(server["captions"])[4]
    img = tmp_path / f"{XSS}.jpg"  # its name comes back in messages: as text
    shutil.copy(server["folder"] / name, img)
    page.goto(server["url"] + "/")
    page.click("#add-box summary")
    assert page.get_by_role("textbox", name="Captions, one per line").count() == 1
    page.set_input_files("#add-file", str(img))
    page.fill("#add-captions", "a red boat moored in the harbour\n" + XSS)
    page.fill("#add-labels", "boats, harbour")
    page.click("#add-go")
    page.wait_for_function("document.querySelector('#add-status').textContent.includes('401')")
    assert page.evaluate("document.querySelector('#key-box').open")
    page.fill("#api-key", create_key(server["coll"], "read", "reader"))
    page.press("#api-key", "Enter")
    page.click("#add-go")
    page.wait_for_function("document.querySelector('#add-status').textContent.includes('403')")
    page.fill("#api-key", create_key(server["coll"], "write", "writer"))
    page.press("#api-key", "Enter")
    page.click("#add-go")
    page.wait_for_function("document.querySelector('#add-status').textContent.includes('Added')")
    added = page.locator("#add-status").inner_text()
    assert "2 captions" in added, added
    import re

    item = server["coll"].get_item(int(re.search(r"image #(\d+)", added).group(1)))
    assert item.modality == "image" and item.labels == ["boats", "harbour"]
    page.click("#add-go")  # the same again: nothing stored twice
    page.wait_for_function("document.querySelector('#add-status').textContent.includes('already')")
    # the added captions are searchable, with their labels
    page.evaluate("location.hash = '#q=red+boat+moored&target=text&labels=boats&k=5'")
    wait_status(page, "captions for")
    assert "a red boat moored in the harbour" in page.locator(".card .caption").all_inner_texts()
    # a file over the server's limit: the server's 413, not a dropped connection
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8" + b"\0" * (21 * 1024 * 1024))
    page.set_input_files("#add-file", str(big))
    page.click("#add-go")
    page.wait_for_function("document.querySelector('#add-status').textContent.includes('413')")
    assert page.evaluate("window.__xss") is None


def test_thumbnails_of_a_private_collection_are_not_for_shared_caches(server):
    """A thumbnail sent with a key must not be kept by a shared cache (a
    proxy in front of the server) and handed to callers without one."""
    from xmodal.service.auth import create_key

    coll, url = server["coll"], server["url"]
    first = coll.list_items("image", 0, 1)[0].id
    public = httpx.get(f"{url}/api/items/{first}/thumbnail")
    assert public.status_code == 200 and "max-age" in public.headers["cache-control"]
    coll.set_setting("public_read", False)
    try:
        got = httpx.get(f"{url}/api/items/{first}/thumbnail",
                        headers={"X-API-Key": create_key(coll, "read", "cache")})
        assert got.status_code == 200
        assert got.headers["cache-control"].startswith("private"), got.headers["cache-control"]
    finally:
        coll.set_setting("public_read", True)


def test_adding_on_a_read_only_server_does_not_ask_for_a_key(server, browser):
    """A 403 because the server is read-only is no key's fault: the key box stays shut."""
    from xmodal.index import Collection
    from xmodal.service import create_app

    ro = Collection.open(server["coll"].path, read_only=True, follow=True)  # beside the writer
    try:
        with serving(create_app(ro)) as url:
            page = browser.new_page(bypass_csp=True)
            page.goto(url + "/")
            page.click("#add-box summary")
            page.set_input_files("#add-file", str(server["folder"] / sorted(server["captions"])[5]))
            page.click("#add-go")
            page.wait_for_function("document.querySelector('#add-status').textContent.includes('403')")
            assert "read-only" in page.locator("#add-status").inner_text()
            assert not page.evaluate("document.querySelector('#key-box').open")
            page.close()
    finally:
        ro.close()


def test_a_link_marking_items_that_are_gone_can_be_cleared(server, page):
    """A shared link whose marked ids are gone (the collection rebuilt since): the server's
    404 is shown and the feedback bar offers Clear, which searches without the marks."""
    page.goto(server["url"] + "/#q=green+trees&target=image")
    wait_status(page, "images for")
    assert not page.locator("#feedback-bar").is_visible()  # nothing marked: no Refine / Clear
    page.goto(server["url"] + "/#q=green+trees&rel=999999&target=image")
    wait_status(page, "404")
    assert "999999" in status(page)
    assert page.locator("#feedback-bar").is_visible()
    page.click("#clear-feedback")
    wait_status(page, "images for")
    assert "rel=" not in page.url


def test_the_page_outlives_a_server_restart(server, page):
    """The server stopped (the page says it did not answer) and started again on its port:
    the same open page searches again, thumbnails included."""
    import threading
    import time

    import uvicorn

    from conftest import free_port
    from xmodal.service import create_app

    port = free_port()

    def start():
        srv = uvicorn.Server(uvicorn.Config(create_app(server["coll"]), host="127.0.0.1", port=port,
                                            log_level="warning"))
        th = threading.Thread(target=srv.run, daemon=True)
        th.start()
        deadline = time.time() + 20
        while not srv.started and time.time() < deadline:
            time.sleep(0.05)
        assert srv.started
        return srv, th

    srv, th = start()
    page.goto(f"http://127.0.0.1:{port}/#q=green+trees&k=3&target=image")
    page.wait_for_function("document.querySelectorAll('.card').length === 3")
    srv.should_exit = True
    th.join(10)
    page.press("#q", "Enter")
    wait_status(page, "did not answer")
    srv, th = start()
    try:
        page.press("#q", "Enter")
        page.wait_for_function("document.querySelectorAll('.card').length === 3")
        page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
    finally:
        srv.should_exit = True
        th.join(10)


def test_thumbnails_are_sharp_on_a_high_density_screen(server, browser):
    page = browser.new_page(bypass_csp=True, device_scale_factor=2)
    page.goto(server["url"] + "/#q=green+trees&k=3&target=image")
    page.wait_for_function("[...document.querySelectorAll('.card img')].length === 3 && "
                           "[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)")
    srcs = page.locator(".card img").evaluate_all("is => is.map(i => i.currentSrc)")
    assert all("size=512" in u for u in srcs), srcs
    page.close()
