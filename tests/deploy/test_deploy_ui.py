"""The demo page's setting in the Kubernetes manifests: off in both overlays (docs/UI.md)."""

from __future__ import annotations

import pytest
from deploy_helpers import OVERLAYS, REPO, render

from server.settings import Settings


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_page_is_off_in_the_cluster(overlay: str) -> None:
    (cm,) = [d for d in render(overlay) if d["kind"] == "ConfigMap"]
    assert cm["data"]["RESNET_UI"] == "false"
    assert Settings(model_dir=REPO, ui=cm["data"]["RESNET_UI"]).ui is False
