"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium,
with what the page tests read back: the rendered results, the error box, and every request the
page made (Chrome's performance log, the CDP Network domain)."""

from __future__ import annotations

import base64
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

# Headless as root in a closed network: without the background-networking flags Chromium keeps
# trying to reach Google, and those refused connections would be noise in the logs.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",  # screenshots as wide as the viewport
)
DESKTOP = (1280, 900)
WAIT_S = 60  # two loaded CPU cores classify a photo in well under a second; this is a hang guard

_READ_CARDS = """
return [...document.querySelectorAll('#results > li')].map((card) => ({
  state: card.dataset.state,
  caption: card.querySelector('figcaption').textContent,
  predictions: [...card.querySelectorAll('.prediction')].map((li) => ({
    index: Number(li.dataset.index),
    probability: Number(li.dataset.probability),
    label: li.querySelector('.label').textContent,
    shown: li.querySelector('.probability').textContent,
    bar: li.querySelector('.fill').style.width,
  })),
  timing: Object.fromEntries([...card.querySelectorAll('.timing dt')].map((dt) => [
    dt.textContent,
    {value: Number(dt.nextElementSibling.dataset.value), shown: dt.nextElementSibling.textContent},
  ])),
}));
"""

# Files built in the page from bytes, then handed over the way a drop or a paste does it.
_DELIVER = """
const [how, files] = arguments;
const data = new DataTransfer();
for (const [name, type, b64] of files) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  data.items.add(new File([bytes], name, {type}));
}
if (how === 'paste') {
  document.dispatchEvent(new ClipboardEvent('paste', {clipboardData: data, bubbles: true, cancelable: true}));
} else {
  const target = document.getElementById('results');
  for (const type of ['dragenter', 'dragover', 'drop']) {
    target.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
  }
}
"""


def system_chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver. When missing: skip on a developer's
    machine, fail in CI (``CI=true``), as the deployment tests do for their tools."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        msg = "chromium and chromedriver are not installed (`make test-tools` installs them)"
        if os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}:
            pytest.fail(f"{msg}; CI must install them", pytrace=False)
        pytest.skip(msg)
    return chromium, driver


@dataclass(frozen=True)
class Request:
    """One request the page made, from ``Network.requestWillBeSent``."""

    id: str
    method: str
    url: str
    headers: dict[str, str]


class Browser:
    """One Chromium with a fresh profile. ``open`` starts a new page visit; ``requests``
    and ``console`` cover what happened since."""

    def __init__(self, profile: Path, log: Path, extra_flags: tuple[str, ...] = ()) -> None:
        chromium, chromedriver = system_chromium()
        options = Options()
        options.binary_location = chromium
        size = "--window-size={},{}".format(*DESKTOP)
        for flag in (*FLAGS, f"--user-data-dir={profile}", size, *extra_flags):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        # An explicit driver path: Selenium Manager never runs (it would try to download one).
        self.driver = webdriver.Chrome(
            options=options, service=Service(chromedriver, log_output=str(log))
        )
        self.driver.get("about:blank")  # let the first-run tab finish before anything is recorded
        self._events: list[dict[str, Any]] = []
        self._console: list[dict[str, Any]] = []
        self._drain()

    def quit(self) -> None:
        self.driver.quit()

    def _drain(self) -> None:
        self.driver.get_log("performance")
        self.driver.get_log("browser")

    def open(self, url: str) -> None:
        """Load the page and wait until it has listed the models."""
        self._drain()
        self._events, self._console = [], []
        self.driver.get(url)
        self.wait(lambda: self.js("return document.querySelectorAll('#model option').length") > 0)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def wait(self, condition: Any, timeout: float = WAIT_S) -> Any:
        return WebDriverWait(self.driver, timeout).until(lambda _: condition())

    def events(self) -> list[dict[str, Any]]:
        """Chrome DevTools events of this visit (``{"method", "params"}``)."""
        for entry in self.driver.get_log("performance"):
            self._events.append(json.loads(entry["message"])["message"])
        return self._events

    def requests(self) -> list[Request]:
        out = []
        for e in self.events():
            if e["method"] == "Network.requestWillBeSent":
                r = e["params"]["request"]
                out.append(Request(e["params"]["requestId"], r["method"], r["url"], r["headers"]))
            elif e["method"] == "Network.webSocketCreated":
                out.append(Request(e["params"]["requestId"], "WEBSOCKET", e["params"]["url"], {}))
        return out

    def posts(self) -> list[Request]:
        return [r for r in self.requests() if r.method == "POST"]

    def response_json(self, request: Request) -> Any:
        """The body the page received for ``request`` (CDP ``Network.getResponseBody``)."""
        got = self.driver.execute_cdp_cmd("Network.getResponseBody", {"requestId": request.id})
        body = base64.b64decode(got["body"]) if got["base64Encoded"] else got["body"]
        return json.loads(body)

    def console(self) -> list[dict[str, Any]]:
        self._console += self.driver.get_log("browser")
        return self._console

    # ------------------------------------------------------------ the page

    def choose(self, *files: Path) -> None:
        """Pick files with the page's file input, as the file dialog would."""
        self.driver.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))

    def deliver(self, how: str, *files: tuple[str, str, bytes]) -> None:
        """Hand ``(name, type, bytes)`` files to the page as a ``drop`` or a ``paste`` event."""
        payload = [[name, ctype, base64.b64encode(data).decode()] for name, ctype, data in files]
        self.js(_DELIVER, how, payload)

    def cards(self) -> list[dict[str, Any]]:
        cards: list[dict[str, Any]] = self.js(_READ_CARDS)
        return cards

    def settled_cards(self, n: int) -> list[dict[str, Any]]:
        """The ``n`` result cards once none is pending any more."""

        def settled() -> list[dict[str, Any]] | None:
            cards = self.cards()
            busy = self.js("return document.getElementById('results').hasAttribute('aria-busy')")
            ok = len(cards) == n and not busy and all(c["state"] != "pending" for c in cards)
            return cards if ok else None

        cards: list[dict[str, Any]] = self.wait(settled)
        return cards

    def text(self, element_id: str) -> str:
        """The visible text of an element ('' when it is hidden)."""
        return str(self.driver.find_element(By.ID, element_id).text)

    def shown(self, element_id: str) -> bool:
        return bool(self.driver.find_element(By.ID, element_id).is_displayed())

    def active_id(self) -> str:
        """The id of the element that has the focus (a link's ``href`` when it has no id)."""
        return str(
            self.js("const a = document.activeElement; return a.id || a.getAttribute('href')")
        )

    def screenshot(self, path: Path) -> bytes:
        """A PNG of the whole page (beyond the viewport), saved to ``path``."""
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
        )
        png = base64.b64decode(shot["data"])
        path.write_bytes(png)
        return png

    def emulate(self, width: int, height: int, *, mobile: bool) -> None:
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def stop_emulating(self) -> None:
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
