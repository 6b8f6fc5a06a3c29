"""The page against a server with an API key, a small body limit and room for one inference
request at a time: the key is asked for, sent like any API client sends it, and forgotten;
refusals show the server's own words; the random-weights banner follows the chosen model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.browser.chromium import Browser
from tests.browser.helpers import CHELSEA, COFFEE, assert_card_shows, predict
from tests.conftest import ServerProcess, start_server
from tests.reliability.helpers import connect, wait_for

KEY = "page-test-key-3f9a"
LIMIT = 300_000  # bytes: chelsea.png (240,512) fits in one request, coffee.png (466,706) does not
BEARER = {"authorization": f"Bearer {KEY}"}


def with_file_weights(src: Path, dst: Path) -> None:
    """``src`` with metadata saying its weights came from a state_dict file: the same graph,
    so the banner's other case needs no second export (which would take minutes here)."""
    model = onnx.load(str(src))
    props = {p.key: p for p in model.metadata_props}
    props["random_weights"].value = "false"
    props["weights"].value = props["weights_source"].value = "file"
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def secured(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("secured-models")
    (models / "resnet18.onnx").symlink_to(model_dir / "resnet18.onnx")
    with_file_weights(model_dir / "resnet18.onnx", models / "resnet18-file.onnx")
    s = start_server(
        models,
        tmp_path_factory.mktemp("secured"),
        api_key=KEY,
        max_body_bytes=LIMIT,
        max_concurrent_requests=1,
        body_timeout_s=60,
        max_batch_size=4,
        warmup_batch_sizes="1",
    )
    yield s
    s.stop()


def headers_of(browser: Browser) -> list[dict[str, str]]:
    """The headers of each POST of this visit, names lower-cased."""
    return [{k.lower(): v for k, v in r.headers.items()} for r in browser.posts()]


def test_page_and_model_list_are_open_inference_is_not(secured: ServerProcess) -> None:
    client = secured.client()
    for path in ("/", "/ui/app.js", "/ui/style.css", "/ui/icon.svg", "/models"):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert KEY not in r.text
    refused = predict(client, "resnet18", CHELSEA)
    assert refused.status_code == 401
    assert refused.json() == {
        "error": "missing or invalid API key (send 'Authorization: Bearer <key>')",
        "code": "unauthorized",
    }


def test_the_key_is_asked_for_sent_and_forgotten(browser: Browser, secured: ServerProcess) -> None:
    browser.open(f"{secured.url}/")
    browser.choose(CHELSEA)
    (card,) = browser.settled_cards(1)
    assert card["state"] == "failed"
    refused = predict(secured.client(), "resnet18", CHELSEA).json()
    assert browser.text("error-status") == "HTTP 401 unauthorized:"
    assert browser.text("error-text") == refused["error"]
    assert browser.text("error-hint") == "Enter the server's API key above."
    assert browser.active_id() == "api-key"  # the cursor waits in the key field
    assert "authorization" not in headers_of(browser)[0]

    browser.driver.find_element(By.ID, "api-key").send_keys(KEY, Keys.ENTER)
    browser.wait(lambda: len(browser.posts()) == 2)
    (card,) = browser.settled_cards(1)
    assert not browser.shown("error")
    assert_card_shows(
        card, predict(secured.client(), "resnet18", CHELSEA, **BEARER).json()["results"][0]
    )
    assert headers_of(browser)[1]["authorization"] == f"Bearer {KEY}"

    # Kept in the page's memory only: no cookie, no storage, not in any URL.
    assert browser.driver.get_cookies() == []
    stored = browser.js("return [localStorage.length, sessionStorage.length, document.cookie]")
    assert stored == [0, 0, ""]
    assert all(KEY not in r.url for r in browser.requests())
    assert KEY not in browser.driver.current_url
    browser.open(f"{secured.url}/")
    assert browser.js("return document.getElementById('api-key').value") == ""


def test_a_too_large_upload_shows_the_limit(browser: Browser, secured: ServerProcess) -> None:
    browser.open(f"{secured.url}/")
    browser.driver.find_element(By.ID, "api-key").send_keys(KEY)
    browser.choose(COFFEE)
    (card,) = browser.settled_cards(1)
    assert card["state"] == "failed"
    r = predict(secured.client(), "resnet18", COFFEE, **BEARER)
    assert r.status_code == 413
    assert r.json() == {
        "error": f"request body exceeds the limit of {LIMIT} bytes",
        "code": "body_too_large",
    }
    assert browser.text("error-status") == "HTTP 413 body_too_large:"
    assert browser.text("error-text") == f"request body exceeds the limit of {LIMIT} bytes"
    assert browser.text("error-hint") == "Try a smaller image, or fewer at once."


def test_the_random_weights_banner_follows_the_model(
    browser: Browser, secured: ServerProcess
) -> None:
    browser.open(f"{secured.url}/")
    select = Select(browser.driver.find_element(By.ID, "model"))
    assert browser.js("return document.getElementById('model').value") == "resnet18"
    assert browser.shown("banner")

    select.select_by_value("resnet18-file")
    assert not browser.shown("banner")
    assert " · weights file · " in browser.text("model-info")
    browser.driver.find_element(By.ID, "api-key").send_keys(KEY)
    browser.choose(CHELSEA)
    (card,) = browser.settled_cards(1)
    assert card["state"] == "done"
    assert not browser.shown("banner")  # the answer says random_weights: false too
    assert browser.text("status").startswith("resnet18-file (version 1, weights file): 1 image")

    select.select_by_value("resnet18")  # re-classifies the same photo with the random model
    browser.wait(lambda: len(browser.posts()) == 2)
    browser.settled_cards(1)
    assert browser.shown("banner")
    assert browser.text("banner").startswith("Random weights. resnet18 was exported")


def test_an_overloaded_server_says_when_to_retry(browser: Browser, secured: ServerProcess) -> None:
    """One authorised upload that never finishes holds the only inference slot (the server
    waits up to body_timeout_s for its body), so the page is turned away at the door."""
    head = (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Authorization: Bearer {KEY}\r\nContent-Length: 100000\r\n\r\n"
    )
    with connect(secured) as hog:
        hog.sendall(head.encode() + b"x" * 100)
        assert wait_for(
            lambda: predict(secured.client(), "resnet18", CHELSEA).status_code == 503, 5
        )
        refused = predict(secured.client(), "resnet18", CHELSEA, **BEARER)
        assert refused.json() == {
            "error": "server busy: 1 requests in flight",
            "code": "overloaded",
        }
        assert refused.headers["retry-after"] == "1"

        browser.open(f"{secured.url}/")
        browser.driver.find_element(By.ID, "api-key").send_keys(KEY)
        browser.choose(CHELSEA)
        (card,) = browser.settled_cards(1)
    assert card["state"] == "failed"
    assert browser.text("error-status") == "HTTP 503 overloaded:"
    assert browser.text("error-text") == "server busy: 1 requests in flight"
    assert browser.text("error-hint") == "Retry in 1 s."
