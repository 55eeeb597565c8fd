"""``run()``: verify then time every selected implementation on every case, in one process."""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import numpy as np

from .._progress import Progress
from . import metadata
from .contention import CpuMeter
from .lines import close_run
from .peers import IMPLEMENTATIONS, Builder, Implementation, Unavailable
from .problems import LAYOUTS, VARIANTS, Layout, Problem, make_layout_problem, size_label
from .report import TablePrinter, failure_lines
from .results import FAILED, NOT_APPLICABLE, OK, UNAVAILABLE, Record, Results, Row
from .threads import ThreadReport, thread_limit
from .timing import MIN_SAMPLE_S, MIN_SAMPLES, Step, interleaved_samples
from .verify import MAX_ELEMENTS, Verifier

#: ``--quick`` (the default): sizes per layout, updates.
QUICK: dict[str, Any] = {"sizes": {"single": [10**3, 10**6, 3 * 10**7], "list": [10**6]},
                         "variants": ["heavy-ball"]}
_ALL_SIZES = [10**3, 10**4, 10**5, 10**6, 10**7, 3 * 10**7, 10**8]
#: ``--full``: every size for both layouts, both updates.
FULL: dict[str, Any] = {"sizes": {"single": _ALL_SIZES, "list": _ALL_SIZES},
                        "variants": ["heavy-ball", "nesterov"]}


def default_threads() -> list[int]:
    """1 and ``os.cpu_count()`` (just 1 on one CPU)."""
    return sorted({1, os.cpu_count() or 1})


def _estimate_seconds(size: int, itemsize: int, samples: int, min_sample_s: float) -> float:
    """A rough cost of timing one implementation (for the ETA only): calibration + samples."""
    per_call = size * itemsize * 5 * 0.25e-9
    return (samples + 2) * max(1.25 * min_sample_s, per_call)


def _load(selected: Sequence[str], registry: Mapping[str, Implementation]
          ) -> tuple[dict[str, Builder], dict[str, str]]:
    """Builders of the implementations that can run, and why the others cannot."""
    builders: dict[str, Builder] = {}
    missing: dict[str, str] = {}
    for name in dict.fromkeys(["numpy", *selected]):  # numpy: the verification needs it
        try:
            builders[name] = registry[name].load()
        except Unavailable as exc:
            missing[name] = str(exc)
    return builders, missing


class _Session:
    """The state of one run: builders, verifier, printer, progress and the growing results."""

    def __init__(self, results: Results, registry: Mapping[str, Implementation],
                 builders: dict[str, Builder], missing: dict[str, str], verifier: Verifier,
                 printer: TablePrinter, progress: Progress, samples: int,
                 min_sample_s: float) -> None:
        self.results, self.registry = results, registry
        self.builders, self.missing, self.verifier = builders, missing, verifier
        self.printer, self.progress = printer, progress
        self.samples, self.min_sample_s = samples, min_sample_s
        self.selected = list(results.implementations)
        self.libraries = {registry[n].library for n in builders}

    def prepare(self, impl: Implementation, problem: Problem, steps: dict[str, Step],
                layout: Layout, hyper_name: str, size: int, report: ThreadReport
                ) -> tuple[Record, Step | None]:
        """Verify one implementation on ``problem`` and build its step (once per problem): its
        record, and the step to time (None when it cannot run, the record saying why)."""
        hyper = VARIANTS[hyper_name]
        dtype = problem.dtype
        record = Record(dtype.name, layout.name, layout.n_arrays, hyper_name, size,
                        report.requested, impl.name, OK)
        if layout.name not in impl.layouts:
            record.status, record.note = NOT_APPLICABLE, f"{impl.name}: lists only"
            return record, None
        if impl.name not in self.builders:
            record.status, record.note = UNAVAILABLE, self.missing[impl.name]
            return record, None
        build = self.builders[impl.name]
        if impl.kind != "bound":  # the bound is no update: its load checked what it does
            record.verified_elements = self.verifier.checked_size(size)
            # A serial implementation computes the same at any thread count: checked once.
            verdict = self.verifier.verify(impl.name, build, dtype, layout, size, hyper,
                                           1 if impl.serial else report.requested)
            if verdict is not None:
                record.status, record.note = FAILED, verdict
                return record, None
        record.threads_set = 1 if impl.serial else report.counts.get(impl.library)
        try:
            if impl.name not in steps:
                steps[impl.name] = build(problem, hyper).step
        except Exception as exc:  # verified, yet broke on the timed problem: say so, go on
            record.status, record.note = FAILED, f"while timing: {type(exc).__name__}: {exc}"
            return record, None
        return record, steps[impl.name]

    def time(self, records: dict[str, Record], steps: dict[str, Step]) -> None:
        """Time the steps side by side (their samples interleaved) into their records."""
        taken = interleaved_samples(steps, samples=self.samples,
                                    min_sample_s=self.min_sample_s)
        for name, samples in taken.items():
            record = records[name]
            try:
                if isinstance(samples, Exception):
                    raise samples
                ran = steps[name]()
            except Exception as exc:  # verified, yet broke on the timed problem: say so, go on
                record.status, record.note = FAILED, f"while timing: {type(exc).__name__}: {exc}"
                continue
            record.samples = samples
            record.seconds = float(np.median(samples))
            if isinstance(ran, int):
                record.threads_ran = ran

    def case(self, layout: Layout, dtype: str, variant: str, size: int,
             threads: Sequence[int]) -> None:
        """Every thread count and implementation on one problem of ``size`` elements."""
        problem = make_layout_problem(layout, size, dtype)
        steps: dict[str, Step] = {}
        weight = _estimate_seconds(size, problem.dtype.itemsize, self.samples,
                                   self.min_sample_s)
        for n in threads:
            meter = CpuMeter()
            where = f"{dtype} {layout.name} {variant} size {size_label(size)}, {n} thr"
            with thread_limit(n, self.libraries) as report:
                cells, timed = {}, {}
                for name in self.selected:
                    self.progress.show(f"{where}: verifying {name}")
                    cells[name], step = self.prepare(self.registry[name], problem, steps,
                                                     layout, variant, size, report)
                    if step is not None:
                        timed[name] = step
                self.progress.show(f"{where}: timing {', '.join(timed)} in turn")
                self.time(cells, timed)
                self.results.records.extend(cells.values())
                self.progress.advance(weight * len(cells))
            others = meter.others()
            for record in cells.values():
                record.others_cpu = others
            self.progress.clear()
            self.progress.advance(0, row_done=True)
            self.printer.row(Row((problem.dtype.name, layout.name, variant, size, n), cells,
                                 self._peers()))
        steps.clear()
        del problem
        gc.collect()  # torch tensors and typed lists hold the arrays: free them now

    def _peers(self) -> tuple[str, ...]:
        return tuple(n for n in self.selected if self.registry[n].kind == "peer")


def run(
    *,
    dtypes: Sequence[str] = ("float32", "float64"),
    sizes: Mapping[str, Sequence[int]] | Sequence[int] | None = None,
    threads: Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
    layouts: Sequence[str] = ("single", "list"),
    impls: Sequence[str] | None = None,
    samples: int = MIN_SAMPLES,
    min_sample_s: float = MIN_SAMPLE_S,
    verify_max_elements: int = MAX_ELEMENTS,
    out: TextIO | str | None = "stdout",
    progress: bool | None = None,
    command: str = "fastmomentum.commands.bench.run()",
    registry: Mapping[str, Implementation] | None = None,
) -> Results:
    """Verify, then time, each implementation on each (dtype, layout, variant, size, threads);
    print the header and the tables to ``out`` as they are measured; return the results.

    ``sizes``: elements per problem, one list for every layout or a mapping layout -> list
    (default: :data:`QUICK`'s). ``threads`` defaults to :func:`default_threads`, ``variants``
    to heavy-ball, ``impls`` to every implementation of ``registry`` (default
    :data:`~fastmomentum.commands.bench.peers.IMPLEMENTATIONS`). ``samples``, ``min_sample_s`` and
    ``verify_max_elements`` are test knobs: below 7 and 20 ms the header says the timings are
    not to be quoted. ``out``: where the header and the tables go (``"stdout"``: the
    ``sys.stdout`` of the moment; ``None``: nowhere). ``progress``: show the bar on stderr
    (default: when it is a terminal).
    """
    # mypy keeps `str` in the else branch (== does not narrow it); a str other than "stdout"
    # is the caller's error
    stream: TextIO | None = sys.stdout if out == "stdout" else out  # type: ignore[assignment]
    registry = dict(IMPLEMENTATIONS if registry is None else registry)
    unknown = [name for name in [*(impls or []), "numpy"] if name not in registry]
    if unknown:
        raise ValueError(f"unknown implementations {unknown}; known: {list(registry)}")
    selected = [name for name in registry if impls is None or name in impls]  # table order
    variants = list(dict.fromkeys(VARIANTS[v].name for v in
                                  (QUICK["variants"] if variants is None else variants)))
    dtypes = [np.dtype(d).name for d in dtypes]
    if not set(dtypes) <= {"float32", "float64"}:
        raise ValueError(f"dtypes must be float32 or float64, got {dtypes}")
    threads = default_threads() if threads is None else list(threads)
    if sizes is None:
        sizes = QUICK["sizes"]
    per_layout = {name: list(sizes[name] if isinstance(sizes, Mapping) else sizes)
                  for name in layouts}
    for name, values in per_layout.items():
        if LAYOUTS[name].n_arrays > min(values, default=LAYOUTS[name].n_arrays):
            raise ValueError(f"{name}: sizes must be >= {LAYOUTS[name].n_arrays} elements")
    if min(threads) < 1 or samples < 1 or min_sample_s <= 0:
        raise ValueError("threads and samples must be >= 1, min_sample_s > 0")

    started, run_meter = time.perf_counter(), CpuMeter()
    builders, missing = _load(selected, registry)
    meta = metadata.collect()
    numba = sys.modules.get("numba")
    if numba is not None and "numba-prange" in builders:
        meta["numba_threading_layer"] = numba.threading_layer()
    implementations = {
        name: {"label": registry[name].label, "kind": registry[name].kind,
               "library": registry[name].library, "serial": registry[name].serial,
               "description": registry[name].description,
               "status": OK if name in builders else UNAVAILABLE,
               "note": missing.get(name, "")}
        for name in selected}
    options = {"dtypes": list(dtypes), "sizes": per_layout, "threads": threads,
               "variants": variants, "layouts": list(layouts), "impls": selected,
               "samples": samples, "min_sample_s": min_sample_s,
               "verify_max_elements": verify_max_elements}
    results = Results(command, options, meta, implementations)
    results.notes += [f"{name}: skipped, {why}" for name, why in missing.items()
                      if name in selected]
    if "numpy" in missing:
        raise RuntimeError(f"the numpy reference cannot run: {missing['numpy']}")
    libraries = {registry[n].library for n in builders}
    for n in threads:
        with thread_limit(n, libraries) as report:
            results.notes += [f"{n} thread(s): {note}" for note in report.notes]

    printer = TablePrinter(stream, implementations)
    printer.header(results)
    weights = [_estimate_seconds(n, np.dtype(d).itemsize, samples, min_sample_s)
               * len(selected) * len(threads)
               for d in dtypes for lay in layouts for _ in variants for n in per_layout[lay]]
    bar = Progress(sum(weights), len(weights) * len(threads), enabled=progress)
    verifier = Verifier(verify_max_elements)
    session = _Session(results, registry, builders, missing, verifier, printer, bar, samples,
                       min_sample_s)
    for dtype in dtypes:
        for layout_name in layouts:
            for variant in variants:
                printer.table_start(np.dtype(dtype).name, layout_name, variant)
                for size in per_layout[layout_name]:
                    session.case(LAYOUTS[layout_name], dtype, variant, size, threads)
    bar.clear()
    close_run(printer, results, started, run_meter, failure_lines(results))
    return results
