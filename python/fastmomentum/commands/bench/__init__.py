"""The user-facing benchmark: ``python -m fastmomentum bench``.

Times one fused momentum-SGD step of fastmomentum against the peers that are installed (NumPy,
numexpr, numba, torch) and the in-place read-modify-write bound, in one process, after checking
each result. The README's "Performance" section describes the method and the results.

- :mod:`.problems`: hyper-parameters, layouts, the arrays stepped;
- :mod:`.peers`: the implementations (:data:`IMPLEMENTATIONS`);
- :mod:`.verify`: the check each one passes before it is timed;
- :mod:`.timing`: medians of loops of back-to-back calls;
- :mod:`.threads`: one thread count for every library;
- :mod:`.contention`: how much CPU other processes took meanwhile (a shared machine);
- :mod:`.runner`: :func:`run`; :mod:`.results`: what it returns;
- :mod:`.report` (table, JSON), :mod:`.plot` (PNG), ``fastmomentum.commands._progress`` (the bar);
- :mod:`.cli`: :func:`main`, the command line;
- ``--state-dtype`` (issue 19's low-precision storage): :mod:`.lowp_kinds` (the kinds, their
  bytes and check), :mod:`.lowp_peers` (torch bf16, optimi, bitsandbytes), :mod:`.lowp_run`
  (:func:`~.lowp_run.run_lowp`), :mod:`.lowp_results`, :mod:`.lowp_report`;
- ``--torch`` (issue 20's ``fastmomentum.torch.SGD`` against ``torch.optim.SGD``):
  :mod:`.torch_sets` (the models' parameter shapes), :mod:`.torch_rows` (the optimizers, their
  check), :mod:`.torch_run` (:func:`~.torch_run.run_torch`), :mod:`.torch_results`,
  :mod:`.torch_report`.
"""

from __future__ import annotations

from .cli import main
from .peers import IMPLEMENTATIONS, Implementation, Unavailable
from .results import Record, Results
from .runner import FULL, QUICK, run
from .timing import seconds_per_call

__all__ = ["FULL", "IMPLEMENTATIONS", "QUICK", "Implementation", "Record", "Results",
           "Unavailable", "main", "run", "seconds_per_call"]
