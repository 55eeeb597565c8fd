"""The ``--torch`` table, its closing lines on issue 20's targets, and the JSON."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .._words import count
from .lines import (
    MISSING,
    LinePrinter,
    busy_cell,
    closing_header_lines,
    dump_json,
    time_line,
    versions,
)
from .torch_results import TorchRecord, TorchResults
from .torch_rows import CHECK_STEPS, CLIP_TARGET, FM_ROW, ROWS
from .torch_sets import ParamSet

JSON_SCHEMA = "fastmomentum-bench-torch/1"
#: (title, width) of each column.
COLUMNS = (("set", 9), ("thr", 3), ("row", 17), ("ms/step", 9), ("fm x", 6), ("want", 6),
           ("met", 4), ("busy", 5))


def _ms(seconds: float) -> str:
    """Milliseconds to 4 significant digits, never in exponent form."""
    ms = seconds * 1e3
    decimals = max(0, 3 - math.floor(math.log10(ms))) if ms > 0 else 0
    return f"{ms:.{decimals}f}"


def row_cells(r: TorchRecord) -> list[str]:
    """A row's cells: set, threads, row, ms per step (or FAILED), fastmomentum's speed-up over
    it, the target, whether it is met, other processes' CPUs."""
    time = (_ms(r.seconds) if r.seconds is not None else
            "FAILED" if r.status == "failed" else MISSING)
    return [r.set, str(r.threads), r.name, time,
            MISSING if r.speedup is None else f"{r.speedup:.2f}",
            MISSING if r.target is None else f">={r.target:.2f}",
            MISSING if r.target_met is None else "yes" if r.target_met else "NO",
            busy_cell(r.others_cpu)]


class TorchPrinter(LinePrinter):
    """Prints the header, each set's title and its rows as they are measured."""

    def header(self, results: TorchResults) -> None:
        """The command, versions, machine, method and legends."""
        self.lines(header_lines(results))

    def table_start(self, pset: ParamSet) -> None:
        """The title and column titles of one set's table."""
        self.line()
        self.line(f"## {pset.name}: {pset.description}, {count(pset.tensors, 'tensor')}, "
                  f"{pset.parameters:,} parameters; ms per opt.step() (lower is better)")
        self.line(_join([t for t, _ in COLUMNS]))

    def rows(self, records: list[TorchRecord]) -> None:
        """The rows of one group at one thread count, then a blank line."""
        for r in records:
            self.line(_join(row_cells(r)))
        self.line()


def _join(cells: list[str]) -> str:
    return "  ".join(f"{v:<{w}}" if t in ("set", "row") else f"{v:>{w}}"
                     for v, (t, w) in zip(cells, COLUMNS, strict=True))


def header_lines(results: TorchResults) -> list[str]:
    """The lines before the tables."""
    meta, opts = results.metadata, results.options
    config = meta["fastmomentum_config"]
    lines = [
        "# fastmomentum benchmark, PyTorch optimizers (issue 20): one opt.step() per call on a "
        "model's parameter set, float32 CPU tensors",
        f"# command: {results.command}",
        f"# resolved: --torch {' '.join(opts['sets'])} --threads "
        f"{' '.join(map(str, opts['threads']))} --samples {opts['samples']} --min-sample-ms "
        f"{opts['min_sample_s'] * 1e3:g}",
        f"# versions: {versions(meta)}",
        f"# CPU: {meta['cpu_model']}, {meta['logical_cpus']} logical CPUs; fastmomentum ISA in "
        f"use {config.get('isa')}, OpenMP {config.get('openmp_version')}; torch.set_num_threads "
        "and fastmomentum.set_num_threads both set to the row's thread count",
        f"# update: lr={opts['lr']:g}, momentum={opts['momentum']:g}, "
        f"nesterov={opts['nesterov']}, weight_decay={opts['weight_decay']:g}; params in "
        f"[-1, 1), .grad set once (uniform, global norm {opts['grad_norm']:g}, never "
        "re-created), the momentum buffers made by a first step; clip rows: max norm "
        f"{opts['max_grad_norm']:g}",
        "# tensors: the step rows share one set of parameters and gradients (each optimizer "
        "its own buffers); clip+torch-fused, which scales the gradients in place, has its own",
        time_line(opts, "the rows of one (set, group, threads) sampled in turn, in one process"),
        f"# checked before timing: each row {CHECK_STEPS} steps on copies of the set vs "
        "torch.optim.SGD(foreach=False) (clip rows: after clip_grad_norm_(foreach=False)), "
        "per tensor within rtol 1e-6, atol 1e-6 x max|reference|; FAILED = not timed",
        "# fm x = this row's time / fastmomentum's in its group (fastmomentum-clip's for the "
        "clip rows): > 1, fastmomentum is faster; want = issue 20's target (no slower than "
        f"torch's fused step on the large sets, >= 2x on the small MLP, >= {CLIP_TARGET:g}x "
        "when clipping); met: whether it is; busy = other processes' CPUs during the row's "
        "sampling",
        "# sets:",
    ]
    lines += [f"#   {name:>17} = {info['description']}: {info['tensors']} tensors, "
              f"{info['parameters']:,} parameters" for name, info in results.sets.items()]
    lines.append("# rows:")
    lines += [f"#   {name:>17} = {description}" for name, description in results.rows.items()]
    lines += closing_header_lines(opts, results.notes)
    return lines


def target_lines(results: TorchResults) -> list[str]:
    """fastmomentum's speed-ups per (set, threads), each target beside its figure."""
    by_case: dict[tuple[str, int], dict[str, TorchRecord]] = {}
    for r in results.records:
        by_case.setdefault((r.set, r.threads), {})[r.name] = r
    lines = ["## fastmomentum's speed-ups (the other row's time / fastmomentum's)"]
    for (name, threads), rows in by_case.items():
        parts = []
        for other in ROWS:
            found = rows.get(other)
            if found is None or other in FM_ROW.values():
                continue
            r = found
            figure = MISSING if r.speedup is None else f"{r.speedup:.2f}x"
            part = f"vs {other} {figure}"
            if r.target is not None:
                met = MISSING if r.target_met is None else "yes" if r.target_met else "NO"
                part += f" (want >= {r.target:.2f}: {met})"
            parts.append(part)
        lines.append(f"# {name}, {count(threads, 'thread')}: " + "; ".join(parts))
    return lines


def failure_lines(results: TorchResults) -> list[str]:
    """One line per failed row (printed after the tables)."""
    return [f"# FAILED: {r.name}, {r.set}, {r.threads} thread(s): {r.note}"
            for r in results.failed]


def to_json(results: TorchResults) -> dict[str, Any]:
    """Every sample and derived figure, the metadata and the notes."""
    return {
        "schema": JSON_SCHEMA,
        "command": results.command,
        "options": results.options,
        "metadata": results.metadata,
        "sets": results.sets,
        "rows": results.rows,
        "notes": results.notes,
        "duration_s": results.duration_s,
        "records": [r.to_dict() for r in results.records],
        "failed": [r.to_dict() for r in results.failed],
    }


def write_json(results: TorchResults, path: str | Path) -> Path:
    """Write :func:`to_json` to ``path``; returns the path."""
    return dump_json(to_json(results), path)
