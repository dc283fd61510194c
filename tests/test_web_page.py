"""The web page as a user meets it (headless chromium driven by Playwright, as in
test_browser.py): a server that stops answering, a k typed in exponent form, an error body that
is not xmodal's, and the result list as a screen reader sees it."""

import json

import pytest

from conftest import need_browser, served_ucm_collection, status, wait_status

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    with served_ucm_collection(tmp_path_factory, "web_page") as srv:  # 14 images
        yield srv


def test_a_server_that_stops_answering_is_said_not_waited_on(server, page):
    """A server that takes the connection and never answers (stopped with SIGSTOP, a hung
    proxy) left 'Searching…' on the page for good: it now says the server is slow after a few
    seconds and gives up with an error after a minute."""
    page.clock.install()
    page.goto(server["url"] + "/#q=green+trees&k=3&target=image")
    page.wait_for_function("document.querySelectorAll('.card').length === 3")
    held = []
    page.route("**/api/search", lambda route: held.append(route))  # never answered
    page.fill("#q", "a river")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Searching')")
    page.clock.run_for(11_000)
    wait_status(page, "not answered")
    assert "Error" not in status(page)
    page.clock.run_for(60_000)
    wait_status(page, "did not answer within")
    assert page.locator("#status.error").count() == 1
    assert page.locator(".card").count() == 0  # the earlier query's results are not left beside it
    for route in held:
        route.abort()


def test_k_in_exponent_form_is_the_number_typed(server, page):
    """A number box takes '1e1' (ten); the page read it with parseInt as 1 and showed one result."""
    page.goto(server["url"] + "/")
    page.fill("#q", "green trees")
    page.fill("#k", "1e1")
    page.press("#q", "Enter")
    wait_status(page, "images for")
    assert page.locator(".card").count() == 10
    assert "k=10" in page.url
    page.goto(server["url"] + "/#q=green+trees&k=4e0")  # a shared link: the same reading
    wait_status(page, "images for")
    assert page.locator(".card").count() == 4
    page.goto(server["url"] + "/#q=river&k=0x3")  # not a number a number box takes: the default 20
    wait_status(page, "images for")
    assert page.locator(".card").count() == 14 and "k=" not in page.url


def test_an_error_body_that_is_not_xmodals_is_shown_not_undefined(server, page):
    """A proxy's JSON error without `detail` was shown as 'Error 503: undefined'."""
    page.goto(server["url"] + "/")
    page.route("**/api/search", lambda r: r.fulfill(status=503, content_type="application/json",
                                                    body=json.dumps({"message": "upstream <b>down</b>"})))
    page.fill("#q", "green trees")
    page.press("#q", "Enter")
    wait_status(page, "503")
    assert "undefined" not in status(page) and "upstream <b>down</b>" in status(page), status(page)
    page.route("**/api/search", lambda r: r.fulfill(status=422, content_type="application/json",
                                                    body=json.dumps({"detail": [{"loc": ["body", "k"]}]})))
    page.press("#q", "Enter")
    wait_status(page, "422")
    assert "undefined" not in status(page), status(page)


def test_results_are_a_named_list_for_screen_readers(server, page):
    """The results were a bare grid of <div>s: a screen reader neither announced a list nor
    how many results it held, nor could it jump to it as a landmark-like region."""
    page.goto(server["url"] + "/#q=green+trees&k=5&target=image")
    page.wait_for_function("document.querySelectorAll('.card').length === 5")
    lst = page.get_by_role("list", name="Search results")
    assert lst.count() == 1
    assert lst.get_by_role("listitem").count() == 5
    # every picture has a text alternative, the page's own and the results'
    assert page.evaluate("[...document.images].every(i => i.alt && i.alt.trim())")


def test_an_empty_search_says_what_to_do_and_a_long_query_is_cut_in_the_status(server, page):
    """Search with an empty box blanked the results without a word; a query of 2,000
    characters was repeated whole in the status line, a wall of text above the results (on a
    phone, several screens)."""
    page.goto(server["url"] + "/#q=green+trees&k=3&target=image")
    page.wait_for_function("document.querySelectorAll('.card').length === 3")
    page.fill("#q", "   ")
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelectorAll('.card').length === 0")
    assert "Type what you are looking for" in status(page), status(page)
    assert page.locator("#status.error").count() == 0
    long = "green trees " + "x" * 1980
    page.fill("#q", long)
    page.press("#q", "Enter")
    wait_status(page, "images for")
    shown = status(page)
    assert "green trees" in shown and len(shown) < 200, len(shown)
    assert page.input_value("#q") == long  # the query itself is kept whole


def test_dropping_something_that_is_not_a_file_is_said(server, page):
    """Text or a picture dragged from another web page (a link, no file) dropped on the drop
    zone did nothing at all: the page now says a file is needed."""
    page.goto(server["url"] + "/")
    page.evaluate("""() => { const dt = new DataTransfer(); dt.setData('text/uri-list', 'https://example.org/a.jpg');
        document.querySelector('#drop').dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true})); }""")
    wait_status(page, "image file")
    assert page.locator("#drop.over").count() == 0


def test_the_number_and_target_boxes_have_visible_labels(server, browser):
    """The k box showed a bare '20' and the target box 'auto', their labels only for screen
    readers: a sighted user could not tell what either meant. The key box cut its own hint."""
    for width in (1200, 360):
        page = browser.new_page(bypass_csp=True, viewport={"width": width, "height": 800})
        page.goto(server["url"] + "/")
        for box, name in (("#k", "Number of results"), ("#target", "Search among")):
            label = page.locator(f"label[for='{box[1:]}']")
            shown = label.bounding_box()
            assert shown and shown["width"] > 20 and shown["height"] > 8, (box, shown)
            assert page.get_by_role("spinbutton" if box == "#k" else "combobox", name=name).count() == 1
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        page.evaluate("document.querySelector('#key-box').open = true")
        key = page.locator("#api-key")
        assert key.evaluate("k => k.scrollWidth <= k.clientWidth + 1 || k.clientWidth >= k.parentElement.clientWidth - 40")
        page.close()


def test_the_window_title_names_the_search(server, page):
    """Every search left the title 'xmodal search': the browser's history list, its Back
    menu and a screen reader's window list showed a row of identical entries."""
    page.goto(server["url"] + "/#q=green+trees&k=3")
    wait_status(page, "images for")
    assert page.title() == "green trees – xmodal search"
    item = page.locator(".card").nth(1).get_attribute("data-id")
    page.locator(".card").nth(1).locator("img").click()
    wait_status(page, f"item {item}")
    assert page.title() == f"item {item} – xmodal search"
    page.fill("#q", "")
    page.evaluate("location.hash = ''")
    page.wait_for_function("document.title === 'xmodal search'")


def test_the_add_form_says_a_read_only_server_takes_nothing_before_the_form_is_filled(server, browser):
    """On a read-only server the Add form said 'needs a write key' and took a file and its
    captions, to answer 403 only then: opening it now says the server is read-only."""
    from conftest import serving
    from xmodal.index import Collection
    from xmodal.service import create_app

    ro = Collection.open(server["coll"].path, read_only=True, follow=True)
    try:
        with serving(create_app(ro)) as url:
            page = browser.new_page(bypass_csp=True)
            page.goto(url + "/")
            page.click("#add-box summary")
            page.wait_for_function("document.querySelector('#add-box .hint').textContent.includes('read-only')")
            assert page.locator("#add-go").is_disabled()
            page.close()
    finally:
        ro.close()
    page = browser.new_page(bypass_csp=True)  # a writable one: the form as it was
    page.goto(server["url"] + "/")
    page.click("#add-box summary")
    page.wait_for_timeout(300)
    assert page.locator("#add-go").is_enabled() and "write key" in page.locator("#add-box .hint").inner_text()
    page.close()


def test_an_answer_that_is_not_json_is_said_plainly(server, page):
    """A proxy or captive portal answering 200 with its own HTML page: the status showed the
    JSON parser's 'Unexpected token '<', "<html><h1"... is not valid JSON'."""
    page.goto(server["url"] + "/")
    page.route("**/api/search", lambda r: r.fulfill(status=200, content_type="text/html",
                                                    body="<html><h1>Sign in to the Wi-Fi</h1></html>"))
    page.fill("#q", "green trees")
    page.press("#q", "Enter")
    wait_status(page, "Error")
    assert "not valid JSON" not in status(page) and "not xmodal's answer" in status(page), status(page)
    page.route("**/api/items", lambda r: r.fulfill(status=201, content_type="text/html", body="<html>portal</html>"))
    page.click("#add-box summary")
    page.set_input_files("#add-file", str(server["folder"] / sorted(server["captions"])[0]))
    page.click("#add-go")
    page.wait_for_function("document.querySelector('#add-status').textContent.includes('Error')")
    shown = page.locator("#add-status").inner_text()
    assert "not valid JSON" not in shown and "not xmodal's answer" in shown, shown


def test_a_file_over_the_upload_limit_is_refused_before_it_is_sent(server, browser, tmp_path):
    """A file over --max-upload-mb went up whole (25 MB over a slow link) before the server's
    413: the page reads the limit from /api/info and says so without sending it."""
    import numpy as np
    from PIL import Image

    from conftest import serving
    from xmodal.service import create_app

    big = tmp_path / "big.png"  # noise does not compress: ~190 KB
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(big)
    small = server["folder"] / sorted(server["captions"])[0]
    limit = 100_000
    assert big.stat().st_size > limit > small.stat().st_size
    with serving(create_app(server["coll"], max_upload_bytes=limit)) as url:
        page = browser.new_page(bypass_csp=True)
        sent = []
        page.on("request", lambda r: sent.append(r.url) if r.method == "POST" else None)
        page.goto(url + "/")
        page.set_input_files("#file", str(big))
        wait_status(page, "upload limit")
        assert "big.png is 0.2 MiB, over this server's upload limit of 0.1 MiB" in status(page)
        assert page.locator("#status.error").count() == 1 and sent == []
        page.click("#add-box summary")
        page.set_input_files("#add-file", str(big))
        page.click("#add-go")
        page.wait_for_function("document.querySelector('#add-status').textContent.includes('upload limit')")
        assert sent == []
        page.set_input_files("#file", str(small))  # one that fits is sent as before
        wait_status(page, "captions for image")
        assert sent and sent[-1].endswith("/api/search/image")
        page.close()


def test_a_results_score_says_what_it_is(server, page):
    """'0.787 · #34' said nothing of what the two numbers are: the score's tooltip does."""
    page.goto(server["url"] + "/#q=green+trees&k=2")
    wait_status(page, "images for")
    score = page.locator(".card .score").first
    title = score.get_attribute("title")
    assert title and "similarity" in title and score.inner_text().split("#")[1] in title


def test_show_more_extends_the_same_search_and_focuses_the_first_new_result(server, page):
    """k was the only way to more results: 'Show more' adds 20 to the same search (no new
    history entry), keeps the results already seen first, and is hidden once all are shown."""
    page.goto(server["url"] + "/#q=green+trees&k=5&target=image")
    wait_status(page, "5 images for")
    first = [c.get_attribute("data-id") for c in page.locator(".card").all()]
    assert page.locator("#more").is_visible()
    entries = page.evaluate("history.length")
    page.focus("#more")
    page.keyboard.press("Enter")
    wait_status(page, "14 images for")  # the collection's 14 images: all of them
    ids = [c.get_attribute("data-id") for c in page.locator(".card").all()]
    assert ids[:5] == first and len(ids) == 14
    assert "k=25" in page.url and page.input_value("#k") == "25"
    assert page.evaluate("history.length") == entries
    # keyboard users land on the first new result, not back at the top
    assert page.evaluate("document.activeElement.closest('.card').dataset.id") == ids[5]
    assert page.locator("#more").is_hidden()  # fewer than k came back: nothing more to show
    page.fill("#q", "")
    page.goto(server["url"] + "/#q=green+trees&k=14&target=image")
    wait_status(page, "14 images for")
    assert page.locator("#more").is_visible()  # a full page: more may exist, the server says


def test_a_search_replaced_by_a_newer_one_is_stopped_not_left_running(server, page):
    """A replaced search's answer was dropped but its request went on (an image upload kept
    sending): a newer search now aborts it."""
    page.goto(server["url"] + "/")
    held, failed = [], []
    page.on("requestfailed", lambda r: failed.append(r.url))

    def hold_first(route):
        if not held:
            held.append(route)  # never answered: only an abort ends it
        else:
            route.continue_()

    page.route("**/api/search", hold_first)
    page.fill("#q", "a river")
    page.press("#q", "Enter")
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Searching')")
    page.fill("#q", "green trees")
    page.press("#q", "Enter")
    wait_status(page, "images for")
    page.wait_for_timeout(200)
    assert held and len(failed) == 1 and failed[0].endswith("/api/search")
    assert "green trees" in status(page) and "Error" not in status(page)
