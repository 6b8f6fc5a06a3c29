"""The agreement check at load: the served variant, on the engine that serves it, against the
fp32 reference its file carries.

Every exported file carries the reference logits of the float64 PyTorch model on the
verification photos (metadata ``reference``). At load the server runs those photos, through
its own preprocessing, on the engine it will serve with (provider, precision, CPU of *this*
machine), and compares with :func:`contract.agreement.compare`: as one batch of all the photos, and
where the engine has a session per batch size (CUDA) on every one of those too, since those
are the ones traffic runs on. A variant below its floors on any of them is refused: a model
that answers differently from its fp32 self is never served silently.
Blocking (runs the engine); called in a thread at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from contract.agreement import Agreement, Floors, compare, default_floors, violations
from contract.photos import photo_batch, reference_photos
from server.models.engines import Engine, EngineReport


class AgreementError(RuntimeError):
    """The variant misses its agreement floors on this machine; the message names the fix.

    ``agreement`` and ``floors``: what was measured and what it missed.
    """

    def __init__(self, message: str, agreement: Agreement, floors: Floors) -> None:
        super().__init__(message)
        self.agreement = agreement
        self.floors = floors


@dataclass(frozen=True)
class LoadAgreement:
    """The check's outcome: the measures, the floors applied, what the engine ran."""

    agreement: Agreement
    floors: Floors
    precision: str
    provider: str
    size_sessions_checked: int = 0
    """sessions per batch size that also passed the floors (their values are not kept)"""

    def describe(self) -> dict[str, Any]:
        return {
            "measured_on": f"{self.provider}, {self.precision}, this machine, at load",
            "values": self.agreement.to_dict(),
            "floors": self.floors.to_dict(),
            "size_sessions_checked": self.size_sessions_checked,
        }


def check_agreement(
    name: str, engine: Engine, floors: Floors | None = None
) -> LoadAgreement | None:
    """Measure ``engine`` against its file's reference; None if the file carries none (files
    exported before the reference existed) or was made with other photos. ``floors``: what
    to hold it to (default: its precision's :data:`~contract.agreement.DEFAULT_FLOORS`).

    Raises:
        AgreementError: a floor of the served precision is missed.
        PhotoSetError: the shipped photos are altered (reinstall).
    """
    reference = engine.meta.reference
    if reference is None:
        return None
    photos = reference_photos(reference.photos)
    if photos is None:
        return None
    report = engine.report
    batch = photo_batch(photos, engine.meta.preprocessing)
    # The variant's precision (the file's, or bf16), not what this CPU executed: an fp16 file
    # that OpenVINO upcasts still carries fp16-rounded weights and is judged as fp16.
    floors = floors or default_floors(report.requested_precision)
    agreement = compare(reference.logits, engine.run(0, batch))
    _refuse_if_missed(name, report, agreement, floors, "")
    # With sessions per batch size (CUDA), those are the sessions traffic runs on.
    for instance in range(engine.instances):
        for n in report.session_batch_sizes:
            got = compare(reference.logits, run_in_batches_of(engine, instance, batch, n))
            _refuse_if_missed(name, report, got, floors, f" (instance {instance}, batch {n})")
    return LoadAgreement(
        agreement,
        floors,
        report.precision,
        report.provider,
        len(report.session_batch_sizes) * engine.instances,
    )


def run_in_batches_of(engine: Engine, instance: int, x: np.ndarray, n: int) -> np.ndarray:
    """Logits ``[len(x), classes]`` of ``x`` run in batches of exactly ``n`` rows (the last
    one filled up with copies of its first row, whose logits are dropped)."""
    out = []
    for i in range(0, len(x), n):
        chunk = x[i : i + n]
        rows = len(chunk)
        if rows < n:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], n - rows, axis=0)])
        out.append(engine.run(instance, chunk)[:rows])
    return np.concatenate(out)


def _refuse_if_missed(
    name: str, report: EngineReport, agreement: Agreement, floors: Floors, where: str
) -> None:
    missed = violations(agreement, floors)
    if missed:
        raise AgreementError(
            f"model {name} ({report.precision} on {report.provider}, {report.runtime}){where} "
            f"misses its agreement floors on {agreement.photos} verification photos: "
            f"{'; '.join(missed)}. Serve the fp32 model, re-export this one on this machine "
            "(python -m export ... --precision ...), or set agreement_check=false to serve "
            "it anyway",
            agreement,
            floors,
        )
