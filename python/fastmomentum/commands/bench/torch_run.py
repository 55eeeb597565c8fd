"""``run_torch()`` (``--torch``): one ``opt.step()`` of ``fastmomentum.torch.SGD`` against
``torch.optim.SGD``'s CPU paths on model-shaped parameter sets, checked then timed side by side."""

from __future__ import annotations

import gc
import importlib
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import metadata, torch_rows
from .contention import CpuMeter
from .lines import close_run
from .threads import thread_limit
from .timing import MIN_SAMPLE_S, MIN_SAMPLES, Step, time_rows
from .torch_report import TorchPrinter, failure_lines, target_lines
from .torch_results import TorchRecord, TorchResults, derive
from .torch_rows import GROUPS, ROWS
from .torch_sets import SETS, ParamSet

#: issue 20's thread counts.
DEFAULT_THREADS = (1, 2)


def torch_missing() -> str | None:
    """Why ``--torch`` cannot run here (torch is not installed), else None."""
    try:
        importlib.import_module("torch")
    except ImportError as exc:
        return f"torch is not installed ({exc}); pip install torch"
    return None


class _Case:
    """One group of rows on one parameter set: its tensors, built once and timed at every
    thread count. The step group's rows share the parameters and gradients (each optimizer has
    its own buffers); the torch clip row, which scales the gradients in place, gets copies."""

    def __init__(self, pset: ParamSet, group: str, seed: int) -> None:
        self.pset, self.group = pset, group
        self.names = [n for n, r in ROWS.items() if r.group == group]
        self.params = torch_rows.make_params(pset, seed)
        self.steps: dict[str, Step] = {}

    def check(self, threads: Sequence[int]) -> dict[tuple[str, int], str | None]:
        """Every row's verdict at every thread count (before any timed step moves the
        parameters: the check's copies start where the timed steps do)."""
        verdicts: dict[tuple[str, int], str | None] = {}
        want = torch_rows.reference(self.group, self.params)
        for n in threads:
            with thread_limit(n, {"torch"}):
                for name in self.names:
                    verdicts[(name, n)] = torch_rows.check(name, self.params, want)
        return verdicts

    def step(self, name: str) -> Step:
        """Row ``name``'s timed step (built, with its first step, at its first use)."""
        if name not in self.steps:
            params = (torch_rows.clone_params(self.params) if name == "clip+torch-fused"
                      else self.params)
            self.steps[name] = torch_rows.build(name, params)
        return self.steps[name]


def _time_case(case: _Case, threads: int, verdicts: dict[tuple[str, int], str | None],
               samples: int, min_sample_s: float, notes: list[str]) -> list[TorchRecord]:
    """The case's rows at this thread count: the checked ones timed in turn. What the thread
    settings could not do (an oversubscribed or capped count) is added to ``notes``."""
    records: dict[str, TorchRecord] = {}
    timed: dict[str, Step] = {}
    with thread_limit(threads, {"torch"}) as report:
        for name in case.names:
            record = records[name] = TorchRecord(
                case.pset.name, name, case.group, threads, "ok",
                torch_rows.target(name, case.pset))
            record.threads_set = report.counts.get(
                "fastmomentum" if name.startswith("fastmomentum") else "torch")
            verdict = verdicts[(name, threads)]
            if verdict is not None:
                record.status, record.note = "failed", verdict
                continue
            try:
                timed[name] = case.step(name)
            except Exception as exc:  # checked, yet broke on the timed tensors: say so, go on
                record.status = "failed"
                record.note = f"while building: {type(exc).__name__}: {exc}".splitlines()[0]
        time_rows(records, timed, samples=samples, min_sample_s=min_sample_s)
    notes += [n for n in report.notes if n not in notes]
    ordered = list(records.values())
    derive(ordered)
    return ordered


def _set_info(pset: ParamSet) -> dict[str, Any]:
    return {"description": pset.description, "tensors": pset.tensors,
            "parameters": pset.parameters, "fused_target": pset.fused_target,
            "clip_target": torch_rows.CLIP_TARGET}


def run_torch(
    *,
    sets: Sequence[str | ParamSet] = tuple(SETS),
    threads: Sequence[int] = DEFAULT_THREADS,
    samples: int = MIN_SAMPLES,
    min_sample_s: float = MIN_SAMPLE_S,
    seed: int = 0,
    out: TextIO | str | None = "stdout",
    command: str = "fastmomentum.commands.bench.torch_run.run_torch()",
) -> TorchResults:
    """Check, then time, every row (:data:`.torch_rows.ROWS`) on each parameter set (names of
    :data:`.torch_sets.SETS`, or :class:`ParamSet` objects: the tests' small ones) at each
    thread count; print the header and a table per set to ``out`` as they are measured
    (``"stdout"``: the ``sys.stdout`` of the moment; ``None``: nowhere); return the results.
    ``samples`` and ``min_sample_s`` below 7 and 20 ms are test knobs (the header says so).
    Needs torch (see :func:`torch_missing`)."""
    stream: TextIO | None = sys.stdout if out == "stdout" else out  # type: ignore[assignment]
    resolved = [SETS[s] if isinstance(s, str) else s for s in sets]
    if min(threads) < 1 or samples < 1 or min_sample_s <= 0:
        raise ValueError("threads and samples must be >= 1, min_sample_s > 0")
    importlib.import_module("fastmomentum.torch")  # torch is there: a failure here is a bug
    started, run_meter = time.perf_counter(), CpuMeter()
    options = {"sets": [s.name for s in resolved], "threads": list(threads),
               "samples": samples, "min_sample_s": min_sample_s, "seed": seed,
               "lr": torch_rows.LR, "momentum": torch_rows.MOMENTUM,
               "weight_decay": torch_rows.WEIGHT_DECAY, "nesterov": torch_rows.NESTEROV,
               "max_grad_norm": torch_rows.MAX_GRAD_NORM, "grad_norm": torch_rows.GRAD_NORM,
               "check_steps": torch_rows.CHECK_STEPS}
    results = TorchResults(command, options, metadata.collect(),
                           {s.name: _set_info(s) for s in resolved})
    printer = TorchPrinter(stream)
    printer.header(results)
    for pset in resolved:
        printer.table_start(pset)
        for group in GROUPS:
            case = _Case(pset, group, seed)
            verdicts = case.check(threads)
            gc.collect()  # the check's copies, before the timed optimizers make buffers
            for n in threads:
                records = _time_case(case, n, verdicts, samples, min_sample_s,
                                     results.notes)
                results.records += records
                printer.rows(records)
            del case
            gc.collect()  # a BERT-base group holds gigabytes: free them before the next
    close_run(printer, results, started, run_meter,
              [*target_lines(results), *failure_lines(results),
               *(f"# note: {note}" for note in results.notes)])
    return results
