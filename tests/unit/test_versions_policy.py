"""Version discovery and policies (server.models.versions): layout, config.json, Triton's policies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.models.versions import ConfigError, ModelConfig, VersionPolicy, read_config, scan


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_policies_select_like_triton() -> None:
    have = [3, 1, 2, 10]
    assert VersionPolicy().select(have) == [10]
    assert VersionPolicy("latest", num_versions=2).select(have) == [3, 10]
    assert VersionPolicy("latest", num_versions=9).select(have) == [1, 2, 3, 10]
    assert VersionPolicy("all").select(have) == [1, 2, 3, 10]
    assert VersionPolicy("specific", versions=(2, 7)).select(have) == [2]
    assert VersionPolicy("specific", versions=(7,)).select(have) == []
    assert VersionPolicy("latest", num_versions=2).to_dict() == {"latest": {"num_versions": 2}}
    assert VersionPolicy("specific", versions=(1, 3)).to_dict() == {
        "specific": {"versions": [1, 3]}
    }


def test_scan_flat_and_versioned(tmp_path: Path) -> None:
    _touch(tmp_path / "flat.onnx")
    _touch(tmp_path / "both.onnx", b"flat")
    _touch(tmp_path / "both" / "1" / "model.onnx", b"dir one")
    _touch(tmp_path / "both" / "4" / "model.onnx")
    _touch(tmp_path / "deep" / "2" / "model.onnx")
    _touch(tmp_path / "deep" / "0" / "model.onnx")  # not a version: 0
    _touch(tmp_path / "deep" / "v3" / "model.onnx")  # not a version: not digits
    _touch(tmp_path / "deep" / "5" / "other.onnx")  # no model.onnx
    (tmp_path / "empty").mkdir()
    found = scan(tmp_path)
    assert {
        n: {v: f.path.relative_to(tmp_path).as_posix() for v, f in vs.items()}
        for n, vs in found.items()
    } == {
        "both": {1: "both/1/model.onnx", 4: "both/4/model.onnx"},
        "deep": {2: "deep/2/model.onnx"},
        "flat": {1: "flat.onnx"},
    }
    assert found["both"][1].signature[0] == len(b"dir one")


def test_read_config(tmp_path: Path) -> None:
    assert read_config(tmp_path, "m") == ModelConfig()
    path = tmp_path / "m" / "config.json"
    _touch(
        path,
        json.dumps({"version_policy": {"all": {}}, "response_cache": {"enable": True}}).encode(),
    )
    assert read_config(tmp_path, "m") == ModelConfig(VersionPolicy("all"), True)
    _touch(path, b'{"version_policy": {"specific": {"versions": [3, 1, 3]}}}')
    assert read_config(tmp_path, "m").policy == VersionPolicy("specific", versions=(1, 3))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{", "not JSON"),
        ("[]", "must be a JSON object"),
        (
            '{"max_batch_size": 4}',
            "unknown keys ['max_batch_size']; known: version_policy, response_cache",
        ),
        (
            '{"version_policy": {"latest": {"num_versions": 0}}}',
            "latest.num_versions must be a positive integer, got 0",
        ),
        ('{"version_policy": {"latest": {}, "all": {}}}', "version_policy must be one of"),
        (
            '{"version_policy": {"specific": {"versions": []}}}',
            "specific.versions must be a non-empty list",
        ),
        (
            '{"version_policy": {"specific": {"versions": [true]}}}',
            "a version must be a positive integer, got True",
        ),
        (
            '{"version_policy": {"newest": {}}}',
            "unknown version_policy 'newest'; use latest, all or specific",
        ),
        ('{"response_cache": {"enable": "yes"}}', 'response_cache must be {"enable": true|false}'),
    ],
)
def test_read_config_refuses(tmp_path: Path, doc: str, message: str) -> None:
    _touch(tmp_path / "m" / "config.json", doc.encode())
    with pytest.raises(ConfigError) as info:
        read_config(tmp_path, "m")
    assert str(info.value).startswith(str(tmp_path / "m" / "config.json"))
    assert message in str(info.value)


def test_settings_refuse_incoherent_combinations(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from server.settings import Settings

    with pytest.raises(ValidationError, match="response_cache_models needs response_cache_bytes"):
        Settings(model_dir=tmp_path, response_cache_models=["resnet18"])
    with pytest.raises(ValidationError, match="model_control=explicit needs workers=1"):
        Settings(model_dir=tmp_path, model_control="explicit", workers=2)
    assert Settings(model_dir=tmp_path, model_control="poll", workers=2).workers == 2
