"""The page on a server that is not ready (here: draining after SIGTERM, which still answers
for ``shutdown_delay_s``; loading models looks the same to the page): it shows the server's
readiness text and keeps looking, while what the server still answers is shown as usual; once
the server is gone, it says that no answer came."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from tests.browser.chromium import Browser
from tests.browser.helpers import CHELSEA, assert_card_shows, predict
from tests.conftest import ServerProcess, start_server
from tests.reliability.helpers import wait_for


@pytest.fixture(scope="module")
def draining(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    s = start_server(
        model_dir,
        tmp_path_factory.mktemp("draining"),
        models="resnet18",
        shutdown_delay_s=300,
        max_batch_size=4,
        warmup_batch_sizes="1",
    )
    try:
        s.proc.send_signal(signal.SIGTERM)  # readiness turns 503 at once, requests still answered
        assert wait_for(lambda: s.client().get("/readyz").status_code == 503, 10)
        yield s
    finally:
        s.stop()  # the second SIGTERM ends it


def test_the_page_says_the_server_is_not_ready(browser: Browser, draining: ServerProcess) -> None:
    assert draining.client().get("/readyz").json() == {
        "error": "not ready: shutting down",
        "code": "not_ready",
    }
    browser.open(f"{draining.url}/")
    browser.wait(lambda: browser.shown("readiness"))
    assert browser.text("readiness") == "Server not ready: shutting down; checking again every 2 s."
    assert browser.js("return document.getElementById('model').value") == "resnet18"

    browser.choose(CHELSEA)
    (card,) = browser.settled_cards(1)
    assert_card_shows(card, predict(draining.client(), "resnet18", CHELSEA).json()["results"][0])
    assert browser.shown("readiness")

    readyz = f"{draining.url}/readyz"
    browser.wait(lambda: [r.url for r in browser.requests()].count(readyz) >= 2, 10)
    assert browser.shown("readiness")

    # Once the server is gone, the page says there was no answer at all.
    draining.stop()
    browser.driver.find_element(By.ID, "again").click()
    (card,) = browser.settled_cards(1)
    assert card["state"] == "failed"
    assert browser.text("error-status") == "No answer:"
    assert browser.text("error-text") == "Failed to fetch"
    assert browser.text("error-hint") == "Is the server still running?"
