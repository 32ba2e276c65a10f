"""The search page at ``/``, driven in a real headless Chromium (Debian's, through Playwright).

Type a query and see thumbnails; drop an image and see its nearest images; click a result and
search by it. ``CLIP_SCREENSHOT=path.png`` also saves a screenshot of the page after the drop
(docs/serving-page.png is one; the tiny random model ranks at random, but an image's nearest
image is itself, at 1.000, whatever the weights).
"""

from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

import clip_embeddings as ce  # noqa: E402
from clip_embeddings.adapters import open_store  # noqa: E402
from clip_embeddings.apps.server import ServeLimits, create_app  # noqa: E402
from tests.serving import running  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed "
                                "(apt-get install chromium; .ci/run does)")


@pytest.fixture(scope="module")
def page_url(tmp_path_factory, tiny_model_path, sample_images):
    location = tmp_path_factory.mktemp("page-db")
    ef = ce.ClipEF(tiny_model_path, device="cpu", cache=False)
    store = open_store("chroma", str(location), "photos", ef)
    store.add_images([str(p) for p in sample_images])
    with running(create_app(store.ef, store, ServeLimits(token="page-token"))) as url:
        yield url, store


@pytest.fixture
def page(page_url, no_proxy):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 760})
        context.add_init_script("localStorage.setItem('clip-embeddings-token', 'page-token')")
        page = context.new_page()
        page.goto(page_url[0] + "/")
        yield page
        browser.close()


def shown(page) -> list[dict]:
    """The result grid as the user sees it: ids, names, scores, and whether each thumbnail loaded."""
    page.wait_for_function("() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
                           " && document.querySelectorAll('#results figure').length > 0")
    return page.eval_on_selector_all("#results figure", """figures => figures.map(f => ({
        id: f.dataset.id, name: f.querySelector('.name').textContent,
        score: parseFloat(f.querySelector('.score').textContent), width: f.querySelector('img').naturalWidth}))""")


def test_typing_a_query_shows_thumbnails_ranked_like_the_store(page, page_url):
    store = page_url[1]
    page.fill("#text", "a photo of a cat")
    page.press("#text", "Enter")
    results = shown(page)
    expected = store.query("a photo of a cat", k=len(results))
    assert [r["id"] for r in results] == [h.id for h in expected]
    assert [r["score"] for r in results] == [round(h.score, 3) for h in expected]
    assert all(r["width"] > 0 for r in results)
    assert "result(s) for" in page.inner_text("#status")


def test_dropping_an_image_shows_its_nearest_images_and_clicking_searches_by_it(page, page_url, sample_images):
    store = page_url[1]
    photo = sample_images[3]
    # A real drop event carrying a File, as a file manager's drag would deliver it.
    page.evaluate("""([name, bytes]) => {
        const transfer = new DataTransfer();
        transfer.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/jpeg'}));
        document.getElementById('drop').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true}));
    }""", [photo.name, list(photo.read_bytes())])
    results = shown(page)
    assert results[0]["name"] == photo.name and results[0]["score"] == 1.0
    assert [r["id"] for r in results] == [h.id for h in store.query(image=str(photo), k=len(results))]
    if os.environ.get("CLIP_SCREENSHOT"):
        page.screenshot(path=os.environ["CLIP_SCREENSHOT"], full_page=True)

    second = sample_images[5]
    page.click(f"#results figure:has(.name:text-is('{second.name}'))")
    page.wait_for_function(f"() => document.getElementById('status').textContent.includes('result(s) for image {second.name}')")
    results = shown(page)
    assert results[0]["name"] == second.name
    assert [r["id"] for r in results] == [h.id for h in store.query(image=str(second), k=len(results))]


def test_a_compound_query_and_more_like_this_from_the_page(page, page_url, sample_images):
    from clip_embeddings.collection.query import parse_query

    store = page_url[1]
    photo = sample_images[2]
    page.set_input_files("#file", str(photo))  # the chosen image is the compound query's img:<name>
    shown(page)
    query = f'2:a photo of a cat + img:{photo.name} - "a dog"'
    page.fill("#terms", query)
    page.press("#terms", "Enter")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('result(s) for 2:a photo')")
    results = shown(page)
    terms = parse_query(query.replace(f"img:{photo.name}", f"img:{photo}"))
    expected = store.query(terms, k=len(results))
    assert [r["id"] for r in results] == [h.id for h in expected]
    assert [r["score"] for r in results] == [round(h.score, 3) for h in expected]

    first = results[0]
    page.fill("#min-score", "-0.5")
    page.click(f"#results figure[data-id='{first['id']}'] .more")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('result(s) for more like')")
    results = shown(page)
    assert first["id"] not in [r["id"] for r in results]
    assert [r["id"] for r in results] == [h.id for h in store.more_like(first["id"], k=24, min_score=-0.5)]
