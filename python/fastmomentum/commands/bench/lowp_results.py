"""What a ``--state-dtype`` run produces: one :class:`LowpRecord` per (row, case, threads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .lowp_kinds import BOUND_TARGET, FLOAT32_BYTES

#: The row every speed-up is measured against, and the floor's row.
FLOAT32, BOUND = "float32", "rmw-bound"


@dataclass
class LowpRecord:
    """One row of the low-precision table at one (variant, size, threads).

    ``source``: ``"fastmomentum"`` (a storage kind), ``"peer"`` or ``"bound"``. ``status``:
    ``"ok"``, ``"failed"`` (its check failed: not timed) or ``"unavailable"``. The derived
    figures are set by :func:`derive` once the row's case is timed.
    """

    name: str
    source: str
    variant: str
    size: int
    threads: int
    bytes_per_element: float
    target_speedup: float | None
    status: str
    note: str = ""
    seconds: float | None = None
    samples: list[float] = field(default_factory=list)
    threads_set: int | None = None
    others_cpu: float | None = None
    speedup_vs_float32: float | None = None
    scaled_bound_seconds: float | None = None
    ratio_to_scaled_bound: float | None = None

    @property
    def ns_per_element(self) -> float | None:
        """Median nanoseconds per element (``None`` unless timed)."""
        return None if self.seconds is None else self.seconds / self.size * 1e9

    @property
    def speed_target_met(self) -> bool | None:
        """Issue 19's speed-up over float32 reached (``None``: no target, or not timed)."""
        if self.target_speedup is None or self.speedup_vs_float32 is None:
            return None
        return self.speedup_vs_float32 >= self.target_speedup

    @property
    def bound_target_met(self) -> bool | None:
        """Within :data:`BOUND_TARGET` of the bound scaled to its bytes (``None``: not timed;
        the bound's own row and the peers have no target)."""
        if self.source != "fastmomentum" or self.ratio_to_scaled_bound is None:
            return None
        return self.ratio_to_scaled_bound <= BOUND_TARGET

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the derived properties added."""
        return {**asdict(self), "ns_per_element": self.ns_per_element,
                "speed_target_met": self.speed_target_met,
                "bound_target_met": self.bound_target_met}


def derive(records: list[LowpRecord]) -> None:
    """Each record's speed-up over the float32 row and its ratio to the RMW bound scaled to its
    bytes (the bound moves 20 B/element; a kind moving B bytes has the floor bound * B / 20),
    all from records of one (variant, size, threads), measured side by side."""
    by_name = {r.name: r.seconds for r in records}
    f32, bound = by_name.get(FLOAT32), by_name.get(BOUND)
    for r in records:
        if r.seconds is None:
            continue
        if f32 is not None:
            r.speedup_vs_float32 = f32 / r.seconds
        if bound is not None:
            r.scaled_bound_seconds = bound * r.bytes_per_element / FLOAT32_BYTES
            r.ratio_to_scaled_bound = r.seconds / r.scaled_bound_seconds


@dataclass
class LowpResults:
    """Everything a ``--state-dtype`` run measured, with the metadata and notes."""

    command: str
    options: dict[str, Any]
    metadata: dict[str, Any]
    rows: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    records: list[LowpRecord] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def failed(self) -> list[LowpRecord]:
        """Records whose check failed."""
        return [r for r in self.records if r.status == "failed"]
