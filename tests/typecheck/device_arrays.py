"""Checked by ``mypy`` (CI's lint step), never run: the public API's types accept the arrays that
the kernels accept, torch's CUDA tensors included, and still reject what the kernels reject.

Each ``# type: ignore[...]`` marks a call that MUST be a type error: mypy's strict mode
(``warn_unused_ignores``) fails this file if one of them stops being an error.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import fastmomentum as fm
from fastmomentum.distributed import DistributedSGD


def functional_steps(host: np.ndarray[tuple[int], np.dtype[np.float32]], gpu: torch.Tensor) -> None:
    fm.functional.sgd_([host], [host], [host], lr=0.1, momentum=0.9)
    fm.functional.sgd_([gpu], [gpu], [gpu], lr=0.1, momentum=0.9)  # a CUDA tensor
    fm.functional.keras_sgd_((gpu,), (gpu,), (gpu,), lr=0.1, momentum=0.9)
    fm.functional.ema_sgd_([gpu], [gpu], [gpu], lr=0.1, beta=0.9)
    fm.functional.sgd_([[1.0, 2.0]], [host], lr=0.1)  # type: ignore[list-item]
    fm.functional.sgd_([host.astype(np.int64)], [host], lr=0.1)  # type: ignore[list-item]


def optimizer_steps(gpu: torch.Tensor) -> None:
    opt = fm.SGD([gpu], lr=0.1, momentum=0.9, nesterov=True)
    opt.step([gpu])
    opt.state[gpu]["momentum_buffer"] = torch.zeros_like(gpu)
    fm.SGD([{"params": [gpu], "lr": 0.01}], lr=0.1)


def host_only(comm: Any, gpu: torch.Tensor) -> None:
    DistributedSGD(comm, [gpu], lr=0.1)  # type: ignore[list-item]
