"""Model versions and Triton's repository API on a real server: version policies, versioned
routes, load / unload / index over REST and gRPC with tritonclient, failed versions that never
take traffic, model_control modes and the API key (docs/VERSIONS.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import httpx
import onnx
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from tritonclient.utils import InferenceServerException

from tests.conftest import ServerProcess, start_server, versioned_dir
from tests.imagegen import jpeg

IMAGE = jpeg(seed=3)
JPEG = {"content-type": "image/jpeg"}


JSON_HEADERS = {"content-type": "application/json"}


def _top(c: httpx.Client, path: str) -> tuple[str, int, float]:
    r = c.post(path, content=IMAGE, headers=JPEG)
    assert r.status_code == 200, r.text
    body = r.json()
    best = body["results"][0]["predictions"][0]
    return body["model_version"], best["index"], best["probability"]


def _versions(c: httpx.Client) -> list[dict[str, str]]:
    return list(c.get("/models").json()["versions"])


@pytest.fixture
def two_versions(model_dir: Path, resnet18_seed1: Path, tmp_path: Path) -> Path:
    return versioned_dir(tmp_path, {1: model_dir / "resnet18.onnx", 2: resnet18_seed1})


def _start(root: Path, tmp_path: Path, **settings: object) -> ServerProcess:
    return start_server(root, tmp_path, max_batch_size=4, warmup_batch_sizes="1,4", **settings)


def test_latest_policy_serves_the_highest_version_and_versioned_routes(
    two_versions: Path, tmp_path: Path
) -> None:
    srv = _start(two_versions, tmp_path)
    try:
        c = srv.client()
        assert _versions(c) == [
            {"name": "resnet18", "version": "2", "state": "ready", "reason": ""}
        ]
        assert [
            (m["name"], m["version"], m["state"]) for m in c.get("/models").json()["models"]
        ] == [("resnet18", "2", "ready")]
        assert _top(c, "/predict/resnet18")[0] == "2"
        r = c.post("/predict/resnet18/versions/1", content=IMAGE, headers=JPEG)
        assert r.status_code == 404
        assert r.json() == {
            "error": "unknown version '1' of model 'resnet18'; served versions: ['2']",
            "code": "unknown_model",
        }
        meta = c.get("/v2/models/resnet18").json()
        assert meta["versions"] == ["2"]
        assert c.get("/v2/models/resnet18/config").json()["version_policy"] == {
            "latest": {"num_versions": 1}
        }
    finally:
        srv.stop()


def test_all_policy_serves_every_version_each_with_its_own_answers(
    two_versions: Path, tmp_path: Path
) -> None:
    (two_versions / "resnet18" / "config.json").write_text(
        json.dumps({"version_policy": {"all": {}}})
    )
    srv = _start(two_versions, tmp_path)
    try:
        c = srv.client()
        assert [v["version"] for v in _versions(c)] == ["1", "2"]
        v1, v2 = _top(c, "/predict/resnet18/versions/1"), _top(c, "/predict/resnet18/versions/2")
        assert (v1[0], v2[0]) == ("1", "2") and v1[1:] != v2[1:]
        assert _top(c, "/predict/resnet18") == v2  # the default: the highest ready version
        assert c.get("/v2/models/resnet18").json()["versions"] == ["1", "2"]
        assert c.get("/v2/models/resnet18/versions/1").json()["versions"] == ["1", "2"]
        # v2 inference at a version answers from it, and says so.
        triton = thttp.InferenceServerClient(srv.url.removeprefix("http://"))
        import numpy as np

        arr = np.array([IMAGE], dtype=object).reshape(-1, 1)
        inp = thttp.InferInput("image_bytes", list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        out = triton.infer(
            "resnet18",
            [inp],
            model_version="1",
            outputs=[thttp.InferRequestedOutput("logits", class_count=1)],
        )
        assert out.get_response()["model_version"] == "1"
        assert int(out.as_numpy("logits")[0][0].decode().split(":")[1]) == v1[1]
        stats = c.get("/v2/models/stats").json()["model_stats"]
        assert [(s["name"], s["version"]) for s in stats] == [("resnet18", "1"), ("resnet18", "2")]
    finally:
        srv.stop()


def test_specific_policy_and_a_bad_config_file(two_versions: Path, tmp_path: Path) -> None:
    config = two_versions / "resnet18" / "config.json"
    config.write_text(json.dumps({"version_policy": {"specific": {"versions": [1]}}}))
    srv = _start(two_versions, tmp_path, model_control="explicit")
    try:
        c = srv.client()
        assert [v["version"] for v in _versions(c)] == ["1"]
        config.write_text(json.dumps({"version_policy": {"newest": {}}}))
        r = c.post("/v2/repository/models/resnet18/load")
        assert r.status_code == 400
        assert r.json() == {
            "error": f"failed to load model 'resnet18': {config}: unknown version_policy "
            "'newest'; use latest, all or specific",
            "code": "model_load_failed",
        }
        assert _top(c, "/predict/resnet18")[0] == "1"
    finally:
        srv.stop()


def _wrong_reference(good: Path, other: Path, out: Path) -> None:
    """``good``'s graph and weights carrying ``other``'s reference logits: a file that loads
    but answers unlike its own reference (what a mixed-up export looks like)."""
    model = onnx.load(str(good))
    ref = {p.key: p.value for p in onnx.load(str(other), load_external_data=False).metadata_props}
    for prop in model.metadata_props:
        if prop.key == "reference":
            prop.value = ref["reference"]
    out.parent.mkdir(parents=True)
    onnx.save(model, str(out))


def test_corrupt_or_disagreeing_version_never_takes_traffic(
    model_dir: Path, resnet18_seed1: Path, tmp_path: Path
) -> None:
    root = versioned_dir(tmp_path, {1: model_dir / "resnet18.onnx"})
    srv = _start(root, tmp_path, model_control="explicit")
    try:
        c = srv.client()
        before = _top(c, "/predict/resnet18")
        v2 = root / "resnet18" / "2" / "model.onnx"
        v2.parent.mkdir()
        v2.write_bytes(b"this is not an ONNX file")
        r = c.post("/v2/repository/models/resnet18/load")
        assert r.status_code == 400
        error = r.json()
        assert error["code"] == "model_load_failed"
        assert error["error"].startswith("failed to load model 'resnet18': version 2: ")
        assert error["error"].endswith(". Still serving versions ['1']")
        reason = error["error"].removeprefix("failed to load model 'resnet18': version 2: ")
        reason = reason.removesuffix(". Still serving versions ['1']")
        assert reason  # the engine's own message
        assert _versions(c) == [
            {"name": "resnet18", "version": "1", "state": "ready", "reason": ""},
            {"name": "resnet18", "version": "2", "state": "failed", "reason": reason},
        ]
        assert _top(c, "/predict/resnet18") == before
        assert "model resnet18 version 2 failed to load, not served: " + reason in srv.log
        metrics = c.get("/metrics").text
        assert (
            'resnet_model_version_state{model="resnet18",state="failed",version="2"} 1.0' in metrics
        )
        assert (
            'resnet_model_version_state{model="resnet18",state="ready",version="1"} 1.0' in metrics
        )
        # Below its agreement floors: refused the same way, with the measured misses.
        v2.unlink()
        v2.parent.rmdir()
        _wrong_reference(resnet18_seed1, model_dir / "resnet18.onnx", v2)
        r = c.post("/v2/repository/models/resnet18/load")
        assert r.status_code == 400
        assert "misses its agreement floors" in r.json()["error"], r.json()
        assert _versions(c)[1]["state"] == "failed"
        assert "misses its agreement floors" in _versions(c)[1]["reason"]
        assert _top(c, "/predict/resnet18") == before
    finally:
        srv.stop()


def test_tritonclient_http_index_load_unload(two_versions: Path, tmp_path: Path) -> None:
    v2 = two_versions / "resnet18" / "2"
    target = (v2 / "model.onnx").resolve()
    (v2 / "model.onnx").unlink()
    v2.rmdir()
    srv = _start(two_versions, tmp_path, model_control="explicit")
    triton = thttp.InferenceServerClient(srv.url.removeprefix("http://"))
    try:
        c = srv.client()
        assert triton.get_model_repository_index() == [
            {"name": "resnet18", "version": "1", "state": "READY", "reason": ""}
        ]
        v2.mkdir()
        (v2 / "model.onnx").symlink_to(target)
        triton.load_model("resnet18")
        assert triton.is_model_ready("resnet18", "2") and not triton.is_model_ready("resnet18", "1")
        assert _top(c, "/predict/resnet18")[0] == "2"
        triton.unload_model("resnet18")
        deadline = time.monotonic() + 30
        while any(e["state"] == "UNLOADING" for e in triton.get_model_repository_index()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert triton.get_model_repository_index() == [
            {"name": "resnet18", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
            {"name": "resnet18", "version": "2", "state": "UNAVAILABLE", "reason": "unloaded"},
        ]
        r = c.post("/v2/repository/index", json={"ready": True})
        assert (r.status_code, r.json()) == (200, [])
        # Outside the inference limits: the body is read up to 64 KiB and no further.
        r = c.post("/v2/repository/index", content=b" " * (64 * 1024 + 1), headers=JSON_HEADERS)
        assert (r.status_code, r.json()) == (
            413,
            {"error": "repository request body over 65536 bytes", "code": "body_too_large"},
        )
        r = c.post("/v2/repository/index", content=b"[1]", headers=JSON_HEADERS)
        assert (r.status_code, r.json()) == (
            400,
            {"error": "repository request body must be a JSON object", "code": "bad_request"},
        )
        metrics = c.get("/metrics").text
        assert 'resnet_model_info{model="resnet18"' not in metrics
        assert 'resnet_images_in_flight{model="resnet18"} 0.0' in metrics
        r = c.post("/predict/resnet18", content=IMAGE, headers=JPEG)
        assert (r.status_code, r.json()) == (
            404,
            {
                "error": "model 'resnet18' is not loaded (version 1 unloaded; version 2 unloaded); "
                "load it through the repository API",
                "code": "unknown_model",
            },
        )
        assert c.get("/readyz").json() == {
            "error": "not ready: no model is loaded (every model was unloaded through the "
            "repository API)",
            "code": "not_ready",
        }
        with pytest.raises(InferenceServerException) as info:
            triton.unload_model("resnet18")
        assert info.value.message() == "model 'resnet18' is not loaded"
        with pytest.raises(InferenceServerException) as info:
            triton.load_model("resnet34")
        assert info.value.message() == (
            "no model 'resnet34' in model_dir (neither resnet34.onnx nor "
            "resnet34/<version>/model.onnx)"
        )
        triton.load_model("resnet18")
        assert _top(c, "/predict/resnet18")[0] == "2"
        assert c.get("/readyz").json() == {"status": "ready"}
        info = [
            x for x in c.get("/metrics").text.splitlines() if x.startswith("resnet_model_info{")
        ]
        assert len(info) == 1 and 'model="resnet18"' in info[0], info
    finally:
        triton.close()
        srv.stop()


def test_tritonclient_grpc_index_load_unload(two_versions: Path, tmp_path: Path) -> None:
    srv = _start(two_versions, tmp_path, model_control="explicit", api_key="s3cret-key-for-tests")
    triton = tgrpc.InferenceServerClient(srv.grpc_url)
    auth = {"authorization": "Bearer s3cret-key-for-tests"}
    try:
        with pytest.raises(InferenceServerException) as info:
            triton.get_model_repository_index()
        assert info.value.status() == "StatusCode.UNAUTHENTICATED"
        index = triton.get_model_repository_index(headers=auth, as_json=True)
        assert index == {"models": [{"name": "resnet18", "version": "2", "state": "READY"}]}
        triton.unload_model("resnet18", headers=auth)
        deadline = time.monotonic() + 30
        while not triton.get_model_repository_index(headers=auth, as_json=True)["models"][0][
            "state"
        ].startswith("UNAVAILABLE"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not triton.is_model_ready("resnet18")
        triton.load_model("resnet18", headers=auth)
        assert triton.is_model_ready("resnet18", "2")
        # REST: the same key.
        r = srv.client().post("/v2/repository/index")
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized")
    finally:
        triton.close()
        srv.stop()


def test_repository_api_is_off_with_model_control_none(server: ServerProcess) -> None:
    c = server.client()
    for path in (
        "/v2/repository/index",
        "/v2/repository/models/resnet18/load",
        "/v2/repository/models/resnet18/unload",
    ):
        r = c.post(path)
        action = path.rsplit("/", 1)[1]
        assert (r.status_code, r.json()) == (
            403,
            {
                "error": f"the repository API ({action}) is off: model_control=none; start the "
                "server with RESNET_MODEL_CONTROL=explicit (or poll) to enable it",
                "code": "repository_disabled",
            },
        )
    triton = tgrpc.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as info:
            triton.load_model("resnet18")
        assert info.value.status() == "StatusCode.FAILED_PRECONDITION"
        assert info.value.message().startswith("the repository API (load) is off")
    finally:
        triton.close()
    assert c.get("/readyz").status_code == 200


def test_poll_follows_model_dir(model_dir: Path, resnet18_seed1: Path, tmp_path: Path) -> None:
    root = versioned_dir(tmp_path, {1: model_dir / "resnet18.onnx"})
    srv = _start(root, tmp_path, model_control="poll", repository_poll_s=0.3)
    try:
        c = srv.client()
        r = c.post("/v2/repository/models/resnet18/load")
        assert (r.status_code, r.json()["code"]) == (403, "repository_disabled")
        assert r.json()["error"].startswith(
            "explicit model load is not allowed with model_control=poll"
        )
        v2 = root / "resnet18" / "2"
        v2.mkdir()
        (v2 / "model.onnx").symlink_to(resnet18_seed1)
        deadline = time.monotonic() + 60
        while _top(c, "/predict/resnet18")[0] != "2":
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.1)
        # A corrupt version 3: logged once, not retried every period, v2 keeps serving.
        (root / "resnet18" / "3").mkdir()
        (root / "resnet18" / "3" / "model.onnx").write_bytes(b"garbage")
        while not any(v["version"] == "3" and v["state"] == "failed" for v in _versions(c)):
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.1)
        time.sleep(1.0)
        assert srv.log.count("poll: failed to load model 'resnet18': version 3: ") == 1
        assert _top(c, "/predict/resnet18")[0] == "2"
        # The model gone from the directory: unloaded.
        for sub in ("1", "2", "3"):
            for f in (root / "resnet18" / sub).iterdir():
                f.unlink()
            (root / "resnet18" / sub).rmdir()
        while c.post("/predict/resnet18", content=IMAGE, headers=JPEG).status_code != 404:
            assert time.monotonic() < deadline, srv.log
            time.sleep(0.1)
    finally:
        srv.stop()


def test_grpc_model_metadata_lists_served_versions(two_versions: Path, tmp_path: Path) -> None:
    (two_versions / "resnet18" / "config.json").write_text('{"version_policy": {"all": {}}}')
    srv = _start(two_versions, tmp_path)
    triton = tgrpc.InferenceServerClient(srv.grpc_url)
    try:
        assert list(triton.get_model_metadata("resnet18", "1").versions) == ["1", "2"]
        with pytest.raises(InferenceServerException) as info:
            triton.get_model_metadata("resnet18", "7")
        assert info.value.status() == f"StatusCode.{grpc.StatusCode.NOT_FOUND.name}"
        assert info.value.message() == (
            "unknown version '7' of model 'resnet18'; served versions: ['1', '2']"
        )
    finally:
        triton.close()
        srv.stop()


def test_a_version_draining_at_shutdown_stops_with_the_server(
    model_dir: Path, resnet18_seed1: Path, tmp_path: Path
) -> None:
    """A request still uploading holds v1 (admitted before its body is read), so v1 drains
    when v2 is published; a SIGTERM then stops it with the rest, cleanly."""
    import socket

    root = versioned_dir(tmp_path, {1: model_dir / "resnet18.onnx"})
    srv = _start(root, tmp_path, model_control="explicit", drain_timeout_s=1)
    port = int(srv.url.rsplit(":", 1)[1])
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        slow.sendall(
            b"POST /predict/resnet18 HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            b"Content-Length: 100000\r\n\r\n" + IMAGE[:10]
        )
        c = srv.client()
        deadline = time.monotonic() + 10
        while 'resnet_images_in_flight{model="resnet18"} 1.0' not in c.get("/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (root / "resnet18" / "2").mkdir()
        (root / "resnet18" / "2" / "model.onnx").symlink_to(resnet18_seed1)
        assert c.post("/v2/repository/models/resnet18/load").status_code == 200
        assert _top(c, "/predict/resnet18")[0] == "2"
        assert c.post("/v2/repository/index").json()[0] == {
            "name": "resnet18",
            "version": "1",
            "state": "UNLOADING",
            "reason": "draining: replaced or unloaded",
        }
        assert srv.stop() == 0
        assert "INFO server.app: stopped" in srv.log
        assert "Task was destroyed but it is pending" not in srv.log
        # (uvicorn logs the upload it cancels after drain_timeout_s: that is the slow client's)
    finally:
        slow.close()
        srv.stop()
