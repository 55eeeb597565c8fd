"""What a run produces: one :class:`Record` per (case, thread count, implementation)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Bytes moved per element, in units of the itemsize: read p, g, b; write p, b.
ARRAYS_PER_ELEMENT = 5

OK, FAILED, UNAVAILABLE, NOT_APPLICABLE = "ok", "failed", "unavailable", "n/a"


@dataclass
class Record:
    """One implementation on one case at one thread count.

    ``status``: ``"ok"`` (timed), ``"failed"`` (its verification failed: not timed),
    ``"unavailable"`` (not installed, or an API this build lacks) or ``"n/a"`` (the
    implementation does not apply to this layout). ``seconds`` is the median time per call,
    ``samples`` every sample behind it. ``others_cpu``: CPUs' worth of work other processes did
    while this record's row was measured (see :mod:`.contention`).
    """

    dtype: str
    layout: str
    n_arrays: int
    variant: str
    size: int
    threads: int
    impl: str
    status: str
    seconds: float | None = None
    samples: list[float] = field(default_factory=list)
    verified_elements: int | None = None
    threads_set: int | None = None
    threads_ran: int | None = None
    others_cpu: float | None = None
    note: str = ""

    @property
    def ns_per_element(self) -> float | None:
        """Median nanoseconds per element (``None`` unless timed)."""
        return None if self.seconds is None else self.seconds / self.size * 1e9

    @property
    def row_key(self) -> tuple[str, str, str, int, int]:
        """(dtype, layout, variant, size, threads): the table row this record is a cell of."""
        return (self.dtype, self.layout, self.variant, self.size, self.threads)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with ``ns_per_element`` added."""
        return {**asdict(self), "ns_per_element": self.ns_per_element}


@dataclass
class Row:
    """One table row: every implementation's record, and fastmomentum's derived figures."""

    key: tuple[str, str, str, int, int]
    cells: dict[str, Record]
    peers: tuple[str, ...]

    def seconds(self, impl: str) -> float | None:
        """``impl``'s median time per call, if it was timed in this row."""
        record = self.cells.get(impl)
        return None if record is None else record.seconds

    def best_peer(self) -> str | None:
        """The fastest timed peer of this row."""
        timed = [(t, name) for name in self.peers if (t := self.seconds(name)) is not None]
        return min(timed)[1] if timed else None

    def summary(self) -> dict[str, Any]:
        """fastmomentum's GB/s and its ratios to the bound, the best peer and numpy."""
        dtype, _, _, size, _ = self.key
        fm, bound, numpy = (self.seconds(n) for n in ("fastmomentum", "rmw-bound", "numpy"))
        best = self.best_peer()
        best_s = self.seconds(best) if best else None
        itemsize = np.dtype(dtype).itemsize
        return {
            "fastmomentum_gb_per_s": (ARRAYS_PER_ELEMENT * itemsize * size / fm / 1e9
                                      if fm else None),
            "ratio_to_bound": fm / bound if fm and bound else None,
            "best_peer": best,
            "ratio_to_best_peer": fm / best_s if fm and best_s else None,
            "speedup_over_numpy": numpy / fm if fm and numpy else None,
            "others_cpu": next((r.others_cpu for r in self.cells.values()
                                if r.others_cpu is not None), None),
        }


@dataclass
class Results:
    """Everything a run measured, with the metadata and notes to read it by."""

    command: str
    options: dict[str, Any]
    metadata: dict[str, Any]
    implementations: dict[str, dict[str, Any]]
    notes: list[str] = field(default_factory=list)
    records: list[Record] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def failed(self) -> list[Record]:
        """Records whose verification failed."""
        return [r for r in self.records if r.status == FAILED]

    def rows(self) -> Iterator[Row]:
        """The table rows, in measurement order."""
        peers = tuple(name for name, info in self.implementations.items()
                      if info["kind"] == "peer")
        grouped: dict[tuple[str, str, str, int, int], dict[str, Record]] = {}
        for record in self.records:
            grouped.setdefault(record.row_key, {})[record.impl] = record
        for key, cells in grouped.items():
            yield Row(key, cells, peers)
