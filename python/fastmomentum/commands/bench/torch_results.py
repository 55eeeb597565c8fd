"""What a ``--torch`` run produces: one :class:`TorchRecord` per (set, row, threads)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .torch_rows import FM_ROW, ROWS


@dataclass
class TorchRecord:
    """One row of the ``--torch`` table at one (set, threads).

    ``status``: ``"ok"`` or ``"failed"`` (its check failed, or it raised: not timed).
    ``speedup`` is fastmomentum's over this row (this row's time / the time of its group's
    fastmomentum row, measured side by side); ``target``: issue 20's for it, where there is one.
    """

    set: str
    name: str
    group: str
    threads: int
    status: str
    target: float | None = None
    note: str = ""
    seconds: float | None = None
    samples: list[float] = field(default_factory=list)
    threads_set: int | None = None
    others_cpu: float | None = None
    speedup: float | None = None

    @property
    def target_met(self) -> bool | None:
        """The target reached (``None``: no target, or not timed)."""
        if self.target is None or self.speedup is None:
            return None
        return self.speedup >= self.target

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, with the derived property added."""
        return {**asdict(self), "target_met": self.target_met}


def derive(records: list[TorchRecord]) -> None:
    """Each timed record's :attr:`~TorchRecord.speedup`, from records of one (set, threads)."""
    fm = {r.group: r.seconds for r in records if r.name == FM_ROW[r.group]}
    for r in records:
        base = fm.get(r.group)
        if r.seconds is not None and base is not None:
            r.speedup = r.seconds / base


@dataclass
class TorchResults:
    """Everything a ``--torch`` run measured, with the metadata and notes."""

    command: str
    options: dict[str, Any]
    metadata: dict[str, Any]
    sets: dict[str, dict[str, Any]]
    rows: dict[str, str] = field(default_factory=lambda: {n: r.description
                                                         for n, r in ROWS.items()})
    notes: list[str] = field(default_factory=list)
    records: list[TorchRecord] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def failed(self) -> list[TorchRecord]:
        """Records whose check failed."""
        return [r for r in self.records if r.status == "failed"]
