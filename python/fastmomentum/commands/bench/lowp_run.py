"""``run_lowp()``: the low-precision storage kinds (``--state-dtype``), the float32 step, the
RMW bound and the installed low-precision peers, checked then timed side by side per case."""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import lowp_kinds, lowp_peers, metadata
from .contention import CpuMeter
from .lines import close_run
from .lowp_kinds import KINDS, Kind
from .lowp_report import LowpPrinter, failure_lines
from .lowp_results import BOUND, FLOAT32, LowpRecord, LowpResults, derive
from .peers import IMPLEMENTATIONS, Unavailable
from .problems import SINGLE, VARIANTS, make_layout_problem, size_label
from .threads import thread_limit
from .timing import MIN_SAMPLE_S, MIN_SAMPLES, Step, time_rows

#: Sizes without --sizes: issue 19's targets hold at n >= 1e7 (3e7 is past the L3 here).
DEFAULT_SIZES = [10**7, 3 * 10**7]
#: The checks before timing use at most this many elements (2 threads still split them).
CHECK_MAX_ELEMENTS = 2**18
#: Versions shown in the header, beyond :data:`metadata.LIBRARIES`.
PEER_DISTRIBUTIONS = ("ml_dtypes", "torch-optimi", "bitsandbytes")


def _available_kinds(names: Sequence[str]) -> dict[str, str | None]:
    """Each kind -> None where it can run, else why not (bfloat16 needs ml_dtypes)."""
    out: dict[str, str | None] = {}
    for name in names:
        kind = KINDS[name]
        try:
            if "bfloat16" in (kind.param, kind.buffer):
                lowp_kinds.bfloat16()
            out[name] = None
        except lowp_kinds.Unavailable as exc:
            out[name] = str(exc)
    return out


class _Case:
    """The steps of one (variant, size), built once and timed at every thread count."""

    def __init__(self, variant: str, size: int, kinds: Sequence[str], peers: Sequence[str],
                 bound: Any) -> None:
        self.variant, self.size = variant, size
        self.hyper = VARIANTS[variant]
        self.problem = make_layout_problem(SINGLE, size, "float32")
        self.kinds, self.peers, self.bound = kinds, peers, bound
        self.steps: dict[str, Step] = {}

    def step(self, name: str) -> Step:
        """The timed step of row ``name`` (built at its first use)."""
        if name not in self.steps:
            p, g, b = (a[0] for a in (self.problem.params, self.problem.grads,
                                      self.problem.buffers))
            if name == BOUND:
                self.steps[name] = self.bound(self.problem, self.hyper).step
            elif name in KINDS:
                self.steps[name] = lowp_kinds.build(KINDS[name], p, g, b, self.hyper)
            else:
                self.steps[name] = lowp_peers.build(name, p, g, self.hyper)
        return self.steps[name]


def _record(name: str, case: _Case, threads: int, status: str, note: str = ""
            ) -> LowpRecord:
    kind: Kind | None = KINDS.get(name)
    if kind is not None:
        source, nbytes, target = "fastmomentum", kind.bytes_per_element(case.size), kind.target
    elif name == BOUND:
        source, nbytes, target = "bound", float(lowp_kinds.FLOAT32_BYTES), None
    else:
        source, nbytes, target = "peer", float(lowp_peers.PEERS[name].bytes_per_element), None
    return LowpRecord(name, source, case.variant, case.size, threads, nbytes, target, status,
                      note)


def _time_case(case: _Case, threads: int, rows: dict[str, dict[str, Any]],
               checked: dict[tuple[str, str, int], str | None], samples: int,
               min_sample_s: float) -> list[LowpRecord]:
    """Check every available row at this thread count, then time them in turn."""
    records: dict[str, LowpRecord] = {}
    timed: dict[str, Step] = {}
    libraries = {"torch"} if case.peers else set()
    with thread_limit(threads, libraries) as report:
        for name, info in rows.items():
            if info["status"] != "ok":
                records[name] = _record(name, case, threads, "unavailable", info["note"])
                continue
            if name in KINDS:
                key = (name, case.variant, threads)
                if key not in checked:
                    checked[key] = lowp_kinds.check(KINDS[name], case.hyper,
                                                    min(case.size, CHECK_MAX_ELEMENTS))
                verdict = checked[key]
            elif name in lowp_peers.PEERS:
                key = (name, case.variant, 0)  # a peer's check is its own (serial) problem
                if key not in checked:
                    checked[key] = lowp_peers.check(name)
                verdict = checked[key]
            else:
                verdict = None  # the bound: its load checked what it does
            record = records[name] = _record(name, case, threads, "ok")
            record.threads_set = report.counts.get(
                "torch" if name in lowp_peers.PEERS else "fastmomentum")
            if verdict is not None:
                record.status, record.note = "failed", verdict
                continue
            try:
                timed[name] = case.step(name)
            except lowp_peers.Unavailable as exc:  # a peer without this update (Nesterov)
                record.status, record.note = "unavailable", str(exc)
            except Exception as exc:  # checked, yet broke on the timed problem: say so, go on
                record.status, record.note = "failed", f"while building: {type(exc).__name__}: " \
                    f"{exc}".splitlines()[0]
        time_rows(records, timed, samples=samples, min_sample_s=min_sample_s)
    ordered = list(records.values())
    derive(ordered)
    return ordered


def run_lowp(
    *,
    kinds: Sequence[str] = tuple(KINDS),
    sizes: Sequence[int] = DEFAULT_SIZES,
    threads: Sequence[int] = (1,),
    variants: Sequence[str] = ("heavy-ball",),
    peers: bool = True,
    samples: int = MIN_SAMPLES,
    min_sample_s: float = MIN_SAMPLE_S,
    out: TextIO | str | None = "stdout",
    command: str = "fastmomentum.commands.bench.lowp_run.run_lowp()",
) -> LowpResults:
    """Check, then time, the storage kinds ``kinds`` (float32 always: the reference), the RMW
    bound and (``peers``) the installed low-precision peers on one array of each size, for each
    thread count and update; print the header and a table per update to ``out`` as they are
    measured (``"stdout"``: the ``sys.stdout`` of the moment; ``None``: nowhere); return the
    results. ``samples`` and ``min_sample_s`` below 7 and 20 ms are test knobs (the header
    says so)."""
    stream: TextIO | None = sys.stdout if out == "stdout" else out  # type: ignore[assignment]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown state dtypes {unknown}; known: {list(KINDS)}")
    if min(threads) < 1 or min(sizes) < 1 or samples < 1 or min_sample_s <= 0:
        raise ValueError("sizes, threads and samples must be >= 1, min_sample_s > 0")
    names = [k for k in KINDS if k == FLOAT32 or k in kinds]
    variants = list(dict.fromkeys(VARIANTS[v].name for v in variants))
    started, run_meter = time.perf_counter(), CpuMeter()

    rows: dict[str, dict[str, Any]] = {}
    for name, reason in _available_kinds(names).items():
        kind = KINDS[name]
        rows[name] = {"source": "fastmomentum", "status": "ok" if reason is None else
                      "unavailable", "note": reason or "",
                      "description": f"fastmomentum.functional.sgd_: {kind.param} params and "
                      f"grads, {'8-bit block' if kind.buffer == 'int8' else kind.buffer} "
                      f"momentum" + {"nearest": "", "stochastic": ", stochastic rounding",
                                     "kahan": ", Kahan compensation"}[kind.write]}
    try:
        bound: Any = IMPLEMENTATIONS["rmw-bound"].load()
        rows[BOUND] = {"source": "bound", "status": "ok", "note": "",
                       "description": "_core.bandwidth_probe, float32: p += s*g; b += s*g "
                       "(20 B/element): the floor, scaled by B/el / 20 for each row"}
    except Unavailable as exc:
        bound = None
        rows[BOUND] = {"source": "bound", "status": "unavailable", "note": str(exc),
                       "description": "_core.bandwidth_probe"}
    peer_names = list(lowp_peers.PEERS) if peers else []
    for name in peer_names:
        peer = lowp_peers.PEERS[name]
        # A missing distribution is 'unavailable'; a wrong result is found by the check.
        reason = (f"{peer.package} is not installed" if metadata.version(peer.package) is None
                  else None)
        rows[name] = {"source": "peer", "status": "unavailable" if reason else "ok",
                      "note": reason or "", "description": f"peer: {peer.description}"}
    meta = metadata.collect()
    meta["versions"].update({d: metadata.version(d) for d in PEER_DISTRIBUTIONS})
    options = {"kinds": names, "sizes": list(sizes), "threads": list(threads),
               "variants": variants, "peers": peers, "samples": samples,
               "min_sample_s": min_sample_s, "check_max_elements": CHECK_MAX_ELEMENTS}
    results = LowpResults(command, options, meta, rows)
    results.notes += [f"{name}: skipped, {info['note']}" for name, info in rows.items()
                      if info["status"] != "ok"]
    printer = LowpPrinter(stream)
    printer.header(results)
    checked: dict[tuple[str, str, int], str | None] = {}
    available_peers = [n for n in peer_names if rows[n]["status"] == "ok"]
    for variant in variants:
        printer.table_start(variant)
        for size in sizes:
            case = _Case(variant, size, names, available_peers, bound)
            for n in threads:
                records = _time_case(case, n, rows, checked, samples, min_sample_s)
                results.records += records
                printer.rows(records)
            del case
            gc.collect()  # torch tensors hold their arrays: free them before the next size
    close_run(printer, results, started, run_meter, failure_lines(results),
              f" ({size_label(max(sizes))} elements at most)")
    return results
