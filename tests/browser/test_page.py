"""The page at ``/`` in a real headless Chromium, against the shared server (both models,
seeded random weights): what it renders is what ``POST /predict`` answers for the same bytes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from server.http.routes.ui import CSP
from tests.browser.chromium import DESKTOP, Browser
from tests.browser.helpers import (
    CHELSEA,
    COFFEE,
    ROCKET,
    assert_card_shows,
    assert_timing_shows,
    keep_screenshot,
    predict,
)
from tests.conftest import ServerProcess

RANDOM_BANNER = (
    "Random weights. {} was exported with seeded random weights, not trained ones: it answers, "
    "but its classes mean nothing."
)
PHONE = (390, 844)  # CSS pixels of a common phone
PAGE_FILES = ["/", "/ui/app.js", "/ui/icon.svg", "/ui/style.css", "/readyz", "/models"]


def assert_only_this_server(browser: Browser, origin: str) -> None:
    """Every request of the visit went to ``origin`` (previews are this origin's ``blob:``s)."""
    for r in browser.requests():
        assert r.url.startswith((f"{origin}/", f"blob:{origin}/")), r


def requested_paths(browser: Browser, origin: str) -> list[str]:
    return sorted(
        r.url.removeprefix(origin) for r in browser.requests() if r.url.startswith(origin)
    )


def wait_for_previews(browser: Browser) -> None:
    browser.wait(lambda: browser.js("return [...document.images].every((i) => i.complete)"))


def test_top5_of_a_real_photo_is_what_predict_answers(
    browser: Browser, server: ServerProcess
) -> None:
    browser.open(f"{server.url}/")
    browser.choose(CHELSEA)
    (card,) = browser.settled_cards(1)

    expected = predict(server.client(), "resnet18", CHELSEA).json()
    assert_card_shows(card, expected["results"][0])
    (post,) = browser.posts()
    assert post.url == f"{server.url}/predict/resnet18?top_k=5"
    assert "authorization" not in {h.lower() for h in post.headers}  # no key typed, none sent
    answer = browser.response_json(post)
    assert_timing_shows(card, answer["results"][0]["timing"])
    assert answer["results"][0]["timing"]["batch_size"] == 1

    assert card["caption"] == "chelsea.png · 235 KiB"  # 240,512 bytes
    visible = browser.driver.find_element(By.CSS_SELECTOR, "#results > li").text
    for p in expected["results"][0]["predictions"]:
        assert p["label"] in visible
    status = browser.text("status")
    assert status.startswith("resnet18 (version 1, weights random): 1 image in one request, "), (
        status
    )
    assert status.endswith(" ms round trip from this browser."), status
    assert not browser.shown("error")
    assert not browser.shown("readiness")

    wait_for_previews(browser)
    assert_only_this_server(browser, server.url)
    blobs = [r for r in browser.requests() if r.url.startswith("blob:")]
    assert len(blobs) == 1  # the preview
    assert requested_paths(browser, server.url) == sorted(
        [*PAGE_FILES, "/predict/resnet18?top_k=5"]
    )
    assert [e for e in browser.console() if e["level"] in ("SEVERE", "WARNING")] == []


def test_every_served_model_is_listed_with_architecture_precision_provider(
    browser: Browser, server: ServerProcess
) -> None:
    listed = server.client().get("/models").json()
    browser.open(f"{server.url}/")
    options = browser.js(
        "return [...document.querySelectorAll('#model option')].map((o) => [o.value, o.textContent])"
    )
    names = [m["name"] for m in listed["models"]]
    assert [name for name, _ in options] == names == ["resnet18", "resnet50"]
    for (_, text), m in zip(options, listed["models"], strict=True):
        default = " (default)" if m["name"] == listed["default_model"] else ""
        variant = f"{m['architecture']} · {m['precision']} · {m['provider']}"
        assert text == f"{m['name']}: {variant}{default}"
    assert options[0][1] == "resnet18: resnet18 · fp32 · cpu (default)"

    select = Select(browser.driver.find_element(By.ID, "model"))
    assert select.first_selected_option.get_attribute("value") == listed["default_model"]
    for m in listed["models"]:
        select.select_by_value(m["name"])
        b = m["batching"]
        assert browser.text("model-info") == (
            f"architecture {m['architecture']} · precision {m['precision']} · provider "
            f"{m['provider']} · weights {m['weights']} · version {m['version']} · batches up to "
            f"{b['max_batch_size']} ({b['policy']})"
        )
    assert browser.text("model-info").endswith(" · batches up to 8 (delay)")  # the fixture's


def test_random_weights_banner(browser: Browser, server: ServerProcess) -> None:
    browser.open(f"{server.url}/")
    assert browser.shown("banner")
    assert browser.text("banner") == RANDOM_BANNER.format("resnet18")
    Select(browser.driver.find_element(By.ID, "model")).select_by_value("resnet50")
    assert browser.text("banner") == RANDOM_BANNER.format("resnet50")


def test_several_photos_go_in_one_request_and_render_in_order(
    browser: Browser, server: ServerProcess, tmp_path: Path
) -> None:
    browser.open(f"{server.url}/")
    Select(browser.driver.find_element(By.ID, "model")).select_by_value("resnet50")
    browser.choose(CHELSEA, ROCKET)
    cards = browser.settled_cards(2)

    (post,) = browser.posts()
    assert post.url == f"{server.url}/predict/resnet50?top_k=5"
    answer = browser.response_json(post)
    expected = predict(server.client(), "resnet50", CHELSEA, ROCKET).json()
    assert [c["caption"] for c in cards] == ["chelsea.png · 235 KiB", "rocket.jpg · 110 KiB"]
    for card, want, got in zip(cards, expected["results"], answer["results"], strict=True):
        assert_card_shows(card, want)
        assert_timing_shows(card, got["timing"])
        assert got["timing"]["batch_size"] == 2  # one request's images run as one batch
    assert browser.text("status").startswith(
        "resnet50 (version 1, weights random): 2 images in one request, "
    )
    assert_only_this_server(browser, server.url)

    wait_for_previews(browser)
    browser.js("document.activeElement.blur()")
    height = browser.js("return document.documentElement.scrollHeight")
    png = Image.open(io.BytesIO(browser.screenshot(tmp_path / "ui-desktop.png")))
    assert png.size == (DESKTOP[0], height)
    keep_screenshot(tmp_path / "ui-desktop.png")


def test_a_non_image_shows_the_servers_error_text(
    browser: Browser, server: ServerProcess, tmp_path: Path
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"not an image, just some words\n")
    browser.open(f"{server.url}/")
    browser.choose(notes)
    (card,) = browser.settled_cards(1)

    r = server.client().post(
        "/predict/resnet18",
        params={"top_k": 5},
        files=[("file", (notes.name, notes.read_bytes(), "text/plain"))],
    )
    assert r.status_code == 400, r.text
    body = r.json()
    assert browser.shown("error")
    assert browser.text("error-status") == f"HTTP 400 {body['code']}:"
    assert browser.text("error-text") == body["error"]
    assert body["code"] == "invalid_image"
    assert card["state"] == "failed" and card["predictions"] == []
    outcome = browser.driver.find_element(By.CSS_SELECTOR, "#results > li .outcome").text
    assert outcome == "not classified: see the error above"
    assert browser.text("status") == ""

    # The next good photo clears the error.
    browser.choose(CHELSEA)
    (card,) = browser.settled_cards(1)
    assert card["state"] == "done"
    assert not browser.shown("error")


def test_drop_and_paste(browser: Browser, server: ServerProcess) -> None:
    """Files handed over by ``drop`` (anywhere on the page) and ``paste`` events are sent as
    they are; Selenium cannot drive a native drag from the desktop, so the events carry files
    built in the page from the photos' bytes."""
    browser.open(f"{server.url}/")
    browser.deliver(
        "drop",
        ("chelsea.png", "image/png", CHELSEA.read_bytes()),
        ("rocket.jpg", "image/jpeg", ROCKET.read_bytes()),
    )
    cards = browser.settled_cards(2)
    expected = predict(server.client(), "resnet18", CHELSEA, ROCKET).json()
    for card, want in zip(cards, expected["results"], strict=True):
        assert_card_shows(card, want)

    browser.deliver("paste", ("image.png", "image/png", COFFEE.read_bytes()))
    (card,) = browser.settled_cards(1)
    assert card["caption"] == "image.png · 456 KiB"
    assert_card_shows(card, predict(server.client(), "resnet18", COFFEE).json()["results"][0])
    assert len(browser.posts()) == 2
    assert_only_this_server(browser, server.url)


_CSP_PROBE = """
const done = arguments[arguments.length - 1];
const seen = [];
document.addEventListener('securitypolicyviolation', (e) => seen.push(`${e.effectiveDirective} ${e.blockedURI}`));
const img = new Image();
img.src = 'http://example.invalid/pixel.png';
document.body.append(img);
const script = document.createElement('script');
script.textContent = 'window.inlineRan = true;';
document.body.append(script);
const style = document.createElement('style');
style.textContent = 'body { display: none; }';
document.head.append(style);
fetch('http://example.invalid/api').catch(() => {});
setTimeout(() => done({
  seen: seen.sort(),
  inlineRan: window.inlineRan === true,
  hidden: getComputedStyle(document.body).display === 'none',
}), 1000);
"""


def test_csp_header_and_the_browser_enforcing_it(browser: Browser, server: ServerProcess) -> None:
    for path in ("/", "/ui/app.js", "/ui/style.css", "/ui/icon.svg"):
        r = server.client().get(path)
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == CSP
    assert CSP == (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )

    browser.open(f"{server.url}/")
    probe = browser.driver.execute_async_script(_CSP_PROBE)
    assert probe == {
        "seen": [
            "connect-src http://example.invalid/api",
            "img-src http://example.invalid/pixel.png",
            "script-src-elem inline",
            "style-src-elem inline",
        ],
        "inlineRan": False,
        "hidden": False,
    }
    outside = [r for r in browser.requests() if "example.invalid" in r.url]
    blocked = {
        e["params"]["requestId"]: e["params"].get("blockedReason")
        for e in browser.events()
        if e["method"] == "Network.loadingFailed"
    }
    # The blocked image shows in the log (so this check can see requests), refused by the CSP.
    assert "http://example.invalid/pixel.png" in [r.url for r in outside]
    assert all(blocked.get(r.id) == "csp" for r in outside), (outside, blocked)


def test_usable_with_the_keyboard(browser: Browser, server: ServerProcess) -> None:
    browser.open(f"{server.url}/")
    browser.js("document.activeElement.blur()")

    def press(*keys: str) -> str:
        """Type ``keys``; the id (or link target) of the element that has the focus then."""
        ActionChains(browser.driver).send_keys(*keys).perform()
        return browser.active_id()

    def tab() -> str:
        return press(Keys.TAB)

    def back() -> str:
        chain = ActionChains(browser.driver).key_down(Keys.SHIFT).send_keys(Keys.TAB)
        chain.key_up(Keys.SHIFT).perform()
        return press()

    # "Classify again" is disabled until there are images, so Tab skips it.
    assert [tab() for _ in range(4)] == ["model", "api-key", "files", "/models"]
    outline = "return getComputedStyle(document.getElementById(arguments[0])).outlineStyle"
    assert back() == "files"
    assert browser.js(outline, "drop") == "solid"  # the hidden input's focus shows on its label

    # Space and Enter on it open the file dialog (intercepted: headless has no dialog to show).
    def dialogs() -> list[str]:
        opened = [e for e in browser.events() if e["method"] == "Page.fileChooserOpened"]
        return [e["params"]["mode"] for e in opened]

    browser.driver.execute_cdp_cmd("Page.enable", {})
    browser.driver.execute_cdp_cmd("Page.setInterceptFileChooserDialog", {"enabled": True})
    try:
        assert press(Keys.SPACE) == "files"
        assert press(Keys.ENTER) == "files"
        browser.wait(lambda: len(dialogs()) == 2)
        assert dialogs() == ["selectMultiple", "selectMultiple"]
    finally:
        browser.driver.execute_cdp_cmd("Page.setInterceptFileChooserDialog", {"enabled": False})
    assert back() == "api-key"
    assert browser.js(outline, "api-key") == "solid"
    assert back() == "model"
    assert browser.js(outline, "model") == "solid"
    assert press(Keys.ARROW_DOWN) == "model"
    assert browser.js("return document.getElementById('model').value") == "resnet50"
    assert browser.text("banner") == RANDOM_BANNER.format("resnet50")

    browser.choose(CHELSEA)  # the file dialog itself is the OS's
    browser.settled_cards(1)
    browser.js("document.getElementById('files').focus()")
    assert tab() == "again"
    ActionChains(browser.driver).send_keys(Keys.ENTER).perform()
    browser.wait(lambda: len(browser.posts()) == 2)
    (card,) = browser.settled_cards(1)
    assert [p.url for p in browser.posts()] == [f"{server.url}/predict/resnet50?top_k=5"] * 2
    assert_card_shows(card, predict(server.client(), "resnet50", CHELSEA).json()["results"][0])


def layout(browser: Browser) -> dict[str, Any]:
    result: dict[str, Any] = browser.js(
        """
        const box = (e) => e.getBoundingClientRect();
        const card = document.querySelector('#results > li');
        return {
          page: document.documentElement.scrollWidth,
          widest: Math.max(...[...document.querySelectorAll('body *')].map((e) => box(e).right)),
          figureBottom: box(card.querySelector('figure')).bottom,
          outcomeTop: box(card.querySelector('.outcome')).top,
        };
        """
    )
    return result


def test_phone_width(browser: Browser, server: ServerProcess, tmp_path: Path) -> None:
    width, height = PHONE
    browser.emulate(width, height, mobile=True)
    try:
        browser.open(f"{server.url}/")
        browser.choose(CHELSEA)
        (card,) = browser.settled_cards(1)
        assert_card_shows(card, predict(server.client(), "resnet18", CHELSEA).json()["results"][0])
        wait_for_previews(browser)
        box = layout(browser)
        assert box["page"] <= width, box  # no sideways scrolling
        assert box["widest"] <= width, box
        assert box["figureBottom"] <= box["outcomeTop"], box  # photo above its classes
        height = browser.js("return document.documentElement.scrollHeight")
        png = Image.open(io.BytesIO(browser.screenshot(tmp_path / "ui-phone.png")))
        assert png.size == (width, height)
        keep_screenshot(tmp_path / "ui-phone.png")
    finally:
        browser.stop_emulating()
