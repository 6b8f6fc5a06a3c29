"""The page's model picker on this CPU with the default settings on OpenVINO: the bf16 variant
the server adds where the CPU has bf16 units is listed (architecture, precision, provider) and
answers like ``POST /predict`` for it; where the CPU has none, only the exported file is."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from contract.cpuinfo import read_cpuinfo
from server.models.engines import openvino_installed
from tests.browser.chromium import Browser
from tests.browser.helpers import CHELSEA, assert_card_shows, predict
from tests.conftest import ServerProcess, start_server

pytestmark = pytest.mark.skipif(not openvino_installed(), reason="needs the openvino extra")


@pytest.fixture(scope="module")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = tmp_path_factory.mktemp("fp32-only")
    (models / "resnet18.onnx").symlink_to(model_dir / "resnet18.onnx")
    srv = start_server(
        models, tmp_path_factory.mktemp("variants"), provider="openvino", warmup_batch_sizes="1"
    )
    yield srv
    srv.stop()


def test_the_picker_lists_the_bf16_variant_where_the_cpu_has_units(
    browser: Browser, server: ServerProcess
) -> None:
    listed = server.client().get("/models").json()
    names = [m["name"] for m in listed["models"]]
    assert names == (["resnet18", "resnet18-bf16"] if read_cpuinfo().bf16 else ["resnet18"])
    browser.open(f"{server.url}/")
    options = browser.js(
        "return [...document.querySelectorAll('#model option')].map((o) => [o.value, o.textContent])"
    )
    assert [name for name, _ in options] == names
    if not read_cpuinfo().bf16:
        return
    assert options[1][1] == "resnet18-bf16: resnet18 · bf16 · openvino"
    Select(browser.driver.find_element(By.ID, "model")).select_by_value("resnet18-bf16")
    browser.choose(CHELSEA)
    (card,) = browser.settled_cards(1)
    expected = predict(server.client(), "resnet18-bf16", CHELSEA).json()["results"][0]
    assert_card_shows(card, expected)
