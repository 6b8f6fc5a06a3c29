"""contract.agreement, contract.photos and the optional metadata keys of contract.modelmeta."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from contract import photos as photos_module
from contract.agreement import (
    DEFAULT_FLOORS,
    Agreement,
    AgreementRecord,
    Floors,
    Measurement,
    compare,
    default_floors,
    violations,
)
from contract.images.preprocess import DecodeLimits
from contract.modelmeta import MetadataError, Preprocessing, ReferenceLogits, parse_metadata
from contract.photos import PhotoSetError, photo_batch, verification_photos


def _logits() -> np.ndarray:
    ref = np.zeros((2, 6))
    ref[0, :] = [5.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    ref[1, :] = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    return ref


def test_identical_logits_agree_fully() -> None:
    a = compare(_logits(), _logits())
    assert a == Agreement(2, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0)


def test_swapped_top1_is_counted_exactly() -> None:
    got = _logits()
    got[1, [4, 5]] = got[1, [5, 4]]  # row 1: top-1 and top-2 swap, same top-5 set
    a = compare(_logits(), got)
    assert (a.photos, a.top1, a.top5_overlap) == (2, 0.5, 1.0)
    # softmax of [0..5]: p5 - p4 = e^4 (e - 1) / sum e^k; L1 counts it twice
    p = np.exp(np.arange(6.0)) / np.exp(np.arange(6.0)).sum()
    assert a.max_probability_diff == pytest.approx(p[5] - p[4], rel=1e-12)
    assert a.softmax_l1_max == pytest.approx(2 * (p[5] - p[4]), rel=1e-12)
    assert a.softmax_l1_mean == pytest.approx(p[5] - p[4], rel=1e-12)
    assert a.max_rel_logit_error == pytest.approx(1 / 5)


def test_top5_overlap_counts_shared_classes() -> None:
    got = _logits()
    got[0, 4], got[0, 5] = -1.0, 10.0  # row 0: class 5 jumps to top-1, class 4 leaves top-5
    a = compare(_logits(), got)
    assert a.top1 == 0.5
    assert a.top5_overlap == pytest.approx((4 / 5 + 1) / 2)


def test_nan_logits_violate_every_floor() -> None:
    got = _logits()
    got[0, 0] = np.nan
    a = compare(_logits(), got)
    assert math.isnan(a.top1) and math.isnan(a.softmax_l1_max)
    assert len(violations(a, DEFAULT_FLOORS["int8"])) == 4


def test_compare_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"same shape .* got \(2, 6\) and \(1, 6\)"):
        compare(_logits(), _logits()[:1])


def test_violations_read_as_sentences() -> None:
    a = Agreement(7, 5 / 7, 0.6, 0.8, 0.3, 0.2, 0.5)
    floors = Floors(
        min_top1=0.85, min_top5_overlap=0.7, max_softmax_l1=0.5, max_rel_logit_error=0.4
    )
    assert violations(a, floors) == [
        "top-1 agreement 0.714 (5/7 photos) is below the floor 0.850",
        "top-5 overlap 0.600 is below the floor 0.700",
        "softmax L1 distance 0.8 (worst photo) is above the floor 0.5",
        "max relative logit error 0.5 is above the floor 0.4",
    ]
    assert violations(Agreement(7, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0), floors) == []


def test_floor_overrides_and_unknown_names() -> None:
    floors = default_floors("int8").with_overrides({"min_top1": 0.5})
    assert floors.min_top1 == 0.5
    assert floors.max_softmax_l1 == DEFAULT_FLOORS["int8"].max_softmax_l1
    with pytest.raises(ValueError, match="unknown floor 'top1'"):
        floors.with_overrides({"top1": 0.5})
    with pytest.raises(ValueError, match="no agreement floors for precision 'int4'"):
        default_floors("int4")


def test_agreement_record_round_trips_through_json() -> None:
    m = Measurement(
        "openvino", "openvino 2026.4.1", "int8", {"model": "x"}, compare(_logits(), _logits())
    )
    record = AgreementRecord("int8", "openvino", DEFAULT_FLOORS["int8"], (m,))
    assert AgreementRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record


def _props(**extra: str) -> dict[str, str]:
    pre = {
        "resize_size": 256,
        "crop_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
    }
    base = {
        "resnet_server.format": "1",
        "architecture": "resnet18",
        "weights": "random",
        "weights_source": "random",
        "weights_sha256": "0" * 64,
        "random_weights": "true",
        "preprocessing": json.dumps(pre),
        "accuracy": "{}",
        "labels": json.dumps(["a"] * 1000),
        "input_name": "images",
        "input_layout": "NHWC",
        "input_dtype": "uint8",
        "output_name": "logits",
    }
    return {**base, **extra}


def test_files_without_the_new_keys_still_load() -> None:
    meta = parse_metadata(_props())
    assert (meta.reference, meta.agreement, meta.calibration, meta.precision) == (
        None,
        None,
        None,
        "fp32",
    )


def test_reference_logits_round_trip() -> None:
    logits = np.arange(2 * 1000, dtype=np.float32).reshape(2, 1000) / 7
    ref = ReferenceLogits((("a.png", "1" * 64), ("b.jpg", "2" * 64)), logits, "torch test")
    meta = parse_metadata(_props(reference=json.dumps(ref.to_dict())))
    assert meta.reference is not None
    assert meta.reference.photos == ref.photos
    assert meta.reference.computed_with == "torch test"
    np.testing.assert_array_equal(meta.reference.logits, logits)


def test_malformed_reference_names_the_key() -> None:
    ref = ReferenceLogits((("a.png", "1" * 64),), np.zeros((1, 1000), np.float32), "t").to_dict()
    ref["shape"] = [2, 1000]
    with pytest.raises(
        MetadataError, match=r"'reference' is malformed: .*for 1 photos, got float32 \[2, 1000\]"
    ):
        parse_metadata(_props(reference=json.dumps(ref)))
    with pytest.raises(MetadataError, match="'agreement' is malformed: KeyError"):
        parse_metadata(_props(agreement="{}"))
    with pytest.raises(MetadataError, match="'calibration' is malformed: JSONDecodeError"):
        parse_metadata(_props(calibration="{"))


def test_verification_photos_are_checked_and_decode() -> None:
    photos = verification_photos()
    assert [p.name for p in photos] == [
        "camera.png",
        "chelsea.png",
        "china.jpg",
        "coffee.png",
        "flower.jpg",
        "grace_hopper.jpg",
        "rocket.jpg",
    ]
    assert sum(len(p.data) for p in photos) == 1_360_201
    spec = Preprocessing(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    batch = photo_batch(photos, spec)
    assert batch.shape == (7, 224, 224, 3) and batch.dtype == np.uint8
    assert DecodeLimits().max_pixels > 640 * 640


def test_an_altered_photo_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(photos_module, "VERIFICATION_SET", (("rocket.jpg", "0" * 64),))
    with pytest.raises(PhotoSetError, match=r"rocket.jpg is altered \(sha256 c2dd0de7c538"):
        verification_photos()
