"""How closely a model variant agrees with its fp32 reference on real photos, and the floors.

A reduced-precision variant (fp16, bf16, INT8) is judged by comparing its logits with the
reference logits of the fp32 model on the verification photos (``contract/photos.py``): the
export step does it before publishing a file, and the server can do it again at load on the
engine that serves it (the reference travels in the model's metadata). numpy only.

The default floors are measured, not guessed: docs/PRECISION.md ("Making reduced-precision
models") gives the commands and the numbers they came from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from contract.scores import softmax, top_k_indices

TOP_K: Final = 5


@dataclass(frozen=True)
class Agreement:
    """Agreement of ``logits`` with ``reference`` over ``photos`` rows.

    ``top1``: fraction of photos whose top-1 class is the reference's (0..1).
    ``top5_overlap``: mean over photos of ``|top5 & top5_ref| / 5`` (0..1).
    ``softmax_l1_max`` / ``softmax_l1_mean``: L1 distance between the two softmax
    distributions of a photo (0..2), largest and mean over photos.
    ``max_probability_diff``: largest ``|p - p_ref|`` of any class of any photo (0..1).
    ``max_rel_logit_error``: largest over photos of ``max |z - z_ref| / max |z_ref|``.
    """

    photos: int
    top1: float
    top5_overlap: float
    softmax_l1_max: float
    softmax_l1_mean: float
    max_probability_diff: float
    max_rel_logit_error: float

    @property
    def top1_count(self) -> str:
        """``"6/7"``: photos whose top-1 agrees, of all (``"nan/7"`` for NaN logits)."""
        agreeing = "nan" if math.isnan(self.top1) else str(round(self.top1 * self.photos))
        return f"{agreeing}/{self.photos}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Agreement:
        """Raises ``KeyError``/``TypeError``/``ValueError`` on a missing or non-numeric field."""
        return cls(photos=int(d["photos"]), **{f.name: float(d[f.name]) for f in fields(cls)[1:]})


@dataclass(frozen=True)
class Floors:
    """The least agreement a variant must reach to be published or served.

    ``min_top1`` and ``min_top5_overlap`` bound :attr:`Agreement.top1` and
    :attr:`Agreement.top5_overlap` from below; ``max_softmax_l1`` bounds
    :attr:`Agreement.softmax_l1_max` and ``max_rel_logit_error`` its namesake from above.
    """

    min_top1: float
    min_top5_overlap: float
    max_softmax_l1: float
    max_rel_logit_error: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Floors:
        """Raises ``KeyError``/``TypeError``/``ValueError`` on a missing or non-numeric field."""
        return cls(**{f.name: float(d[f.name]) for f in fields(cls)})

    def with_overrides(self, overrides: Mapping[str, float]) -> Floors:
        """A copy with some floors replaced; raises ``ValueError`` naming an unknown one."""
        unknown = sorted(set(overrides) - {f.name for f in fields(self)})
        if unknown:
            raise ValueError(f"unknown floor {unknown[0]!r}; known: {list(self.to_dict())}")
        return replace(self, **{k: float(v) for k, v in overrides.items()})


#: Default floors per served precision, from the measurements in docs/PRECISION.md
#: ("Floors"). INT8 (AMD EPYC AVX2, random-weight ResNet18/50, ONNX Runtime CPU and OpenVINO):
#: the default recipe measured top-1 0.84-0.89 and top-5 overlap 0.88-0.89 on 70 held-out
#: crops, softmax L1 <= 0.093, relative logit error <= 0.23; recipes that saturate (no
#: reduce_range on AVX2) or are symmetric gave L1 0.16-0.33 and 0.37-0.47, and fail. On 7
#: photos one or two top-1 flips are normal for random weights (flat softmax), hence 0.7.
#: bf16 (measured at load on an AMD EPYC with AVX512_BF16 and an Intel Xeon with AMX): a
#: healthy ResNet18 gives L1 0.005 and relative error 0.011 on both; random-weight ResNet50
#: L1 0.07-0.15 and 0.10-0.41 (random nets amplify rounding: flat softmaxes, near-tied
#: ranks), while broken inputs to the same engine (BGR, H/W swapped, +-8 noise, photos
#: mismatched) gave L1 0.16-1.55 or relative error 0.19-4.1. bf16 rounds each operand to an
#: 8-bit mantissa and accumulates in fp32, so a trained (peaked) net stays far inside these.
#: fp32 is there so a server can check any file the same way (measured <= 5e-5 relative).
DEFAULT_FLOORS: Final[dict[str, Floors]] = {
    "fp32": Floors(min_top1=1.0, min_top5_overlap=1.0, max_softmax_l1=1e-3, max_rel_logit_error=1e-3),
    "fp16": Floors(min_top1=0.85, min_top5_overlap=0.9, max_softmax_l1=0.02, max_rel_logit_error=0.01),
    "bf16": Floors(min_top1=0.7, min_top5_overlap=0.7, max_softmax_l1=0.1, max_rel_logit_error=0.15),
    "int8": Floors(min_top1=0.7, min_top5_overlap=0.8, max_softmax_l1=0.15, max_rel_logit_error=0.3),
}  # fmt: skip


def compare(reference: npt.ArrayLike, logits: npt.ArrayLike) -> Agreement:
    """Compare ``logits`` with ``reference``: both float ``[photos, classes]``, same order.

    Computed in float64. NaN or infinite ``logits`` give NaN measures, which no floor accepts.

    Raises:
        ValueError: the shapes differ, are not 2-D, have no row or fewer than 5 classes, or
            ``reference`` is not finite.
    """
    ref = np.asarray(reference, dtype=np.float64)
    got = np.asarray(logits, dtype=np.float64)
    if ref.shape != got.shape or ref.ndim != 2 or ref.shape[0] == 0 or ref.shape[1] < TOP_K:
        raise ValueError(
            f"need two [photos, classes] arrays of the same shape with >= {TOP_K} classes, "
            f"got {ref.shape} and {got.shape}"
        )
    if not np.isfinite(ref).all():
        raise ValueError("reference logits are not finite")
    with np.errstate(invalid="ignore", over="ignore"):
        if not np.isfinite(got).all():
            got = np.where(np.isfinite(got), got, np.nan)
        diff = np.abs(softmax(got) - softmax(ref))
        l1, prob_diff = diff.sum(axis=1), diff.max()
        scale = np.maximum(np.abs(ref).max(axis=1), np.finfo(np.float64).tiny)
        rel = (np.abs(got - ref).max(axis=1) / scale).max()
    top5_ref, top5_got = top_k_indices(ref, TOP_K), top_k_indices(got, TOP_K)
    overlap = [len(set(a) & set(b)) / TOP_K for a, b in zip(top5_ref, top5_got, strict=True)]
    nan = bool(np.isnan(got).any())
    return Agreement(
        photos=int(ref.shape[0]),
        top1=math.nan if nan else float((top5_ref[:, 0] == top5_got[:, 0]).mean()),
        top5_overlap=math.nan if nan else float(np.mean(overlap)),
        softmax_l1_max=float(l1.max()),
        softmax_l1_mean=float(l1.mean()),
        max_probability_diff=float(prob_diff),
        max_rel_logit_error=float(rel),
    )


def violations(agreement: Agreement, floors: Floors) -> list[str]:
    """The floors ``agreement`` misses, each as a readable sentence; empty when it passes.

    A NaN measure misses its floor.
    """
    a, f, out = agreement, floors, []
    if not a.top1 >= f.min_top1:
        out.append(
            f"top-1 agreement {a.top1:.3f} ({a.top1_count} photos) "
            f"is below the floor {f.min_top1:.3f}"
        )
    if not a.top5_overlap >= f.min_top5_overlap:
        out.append(
            f"top-5 overlap {a.top5_overlap:.3f} is below the floor {f.min_top5_overlap:.3f}"
        )
    if not a.softmax_l1_max <= f.max_softmax_l1:
        out.append(
            f"softmax L1 distance {a.softmax_l1_max:.3g} (worst photo) is above the floor "
            f"{f.max_softmax_l1:.3g}"
        )
    if not a.max_rel_logit_error <= f.max_rel_logit_error:
        out.append(
            f"max relative logit error {a.max_rel_logit_error:.3g} is above the floor "
            f"{f.max_rel_logit_error:.3g}"
        )
    return out


def default_floors(precision: str) -> Floors:
    """:data:`DEFAULT_FLOORS` for ``precision``; raises ``ValueError`` naming the known ones."""
    try:
        return DEFAULT_FLOORS[precision]
    except KeyError:
        raise ValueError(
            f"no agreement floors for precision {precision!r}; known: {sorted(DEFAULT_FLOORS)}"
        ) from None


@dataclass(frozen=True)
class Measurement:
    """One agreement measurement: where it ran and what it gave.

    ``provider``: ``cpu``, ``openvino`` or ``cuda``; ``runtime``: e.g. ``openvino 2026.4.1``;
    ``executed_precision``: what the engine reported running; ``cpu``: the CPU summary
    (``contract.cpuinfo.CpuInfo.describe()``).
    """

    provider: str
    runtime: str
    executed_precision: str
    cpu: dict[str, Any]
    agreement: Agreement

    def to_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "runtime": self.runtime,
            "executed_precision": self.executed_precision,
            "cpu": dict(self.cpu),
            "agreement": self.agreement.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Measurement:
        return cls(
            provider=str(d["provider"]),
            runtime=str(d["runtime"]),
            executed_precision=str(d["executed_precision"]),
            cpu=dict(d.get("cpu", {})),
            agreement=Agreement.from_dict(d["agreement"]),
        )


@dataclass(frozen=True)
class AgreementRecord:
    """What the export step measured for a reduced-precision file (metadata ``agreement``).

    ``serving_provider`` is the provider the file was made for; ``measurements`` has one
    entry per engine it was checked on (that provider first).
    """

    precision: str
    serving_provider: str
    floors: Floors
    measurements: tuple[Measurement, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "serving_provider": self.serving_provider,
            "reference": "float64 unfused PyTorch model on the verification photos",
            "floors": self.floors.to_dict(),
            "measurements": [m.to_dict() for m in self.measurements],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AgreementRecord:
        """Raises ``KeyError``/``TypeError``/``ValueError`` on a malformed record."""
        return cls(
            precision=str(d["precision"]),
            serving_provider=str(d["serving_provider"]),
            floors=Floors.from_dict(d["floors"]),
            measurements=tuple(Measurement.from_dict(m) for m in d["measurements"]),
        )
