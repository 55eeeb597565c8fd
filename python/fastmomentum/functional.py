"""In-place momentum-SGD steps on lists of NumPy arrays: one fused pass per call.

Every function updates ``params`` (and the buffers) in place and returns a
:class:`~fastmomentum.guards.StepResult`. The functions are compiled entry points that take their
keyword arguments directly (no Python wrapper runs per call); their signatures, types and
docstrings are those below. All arrays of
one index must share dtype (float32 or float64), shape and memory layout, be dense (no gaps, no
overlaps: C order, Fortran order, a transpose, a reversed view, PyTorch's channels_last...) and
aligned, and the written ones writeable; arrays are never copied. The update is element-wise and
runs in memory order, so one index's arrays must have the same strides in elements (create
buffers with ``np.zeros_like(p)``, which keeps a layout; a reversed view's buffer must be
reversed too); an 8-bit buffer is for a C-contiguous parameter. Any violation raises
``TypeError`` or ``ValueError`` naming the argument and index, and then NO array has been modified.

The arrays are NumPy arrays, or all CUDA arrays on one GPU (CuPy arrays, PyTorch CUDA tensors,
anything with ``__cuda_array_interface__`` or ``__dlpack__``; the first parameter decides). A
device step runs the same per-element formula on the GPU, with the same bits as on the CPU, on the
current stream of the arrays' library, and returns without waiting for the GPU unless a guard
needs the gradients' verdict.

Storage below float32 (:mod:`fastmomentum.storage`). A float32 parameter's buffer may be a
bfloat16 or float16 array, or an 8-bit :class:`~fastmomentum.storage.QuantizedBuffer`. A
parameter may be bfloat16 (``ml_dtypes.bfloat16``) or float16, with a gradient of its dtype or
float32 and a buffer of any of those kinds or float32. Such elements are widened to float32
exactly, updated by the float32 formula (blocks of 256 per parameter), and rounded back: buffers
to nearest; 16-bit parameters to nearest (``rounding="nearest"``, lossy), stochastically
(``rounding="stochastic"``, with random numbers keyed by ``seed``, ``step`` and the parameter's
index, ints >= 0: the same bits on every ISA, thread count and resumed run), or with a Kahan
compensation: ``compensations=[c, ...]``, one zero-initialised array of the parameter's dtype and
shape (or None) per parameter, where ``p + c`` is the parameter's float32 value. The guards read
16-bit gradients widened; the norm is summed kind by kind (float32, float64, then each storage
kind in order of appearance), so gradients of one kind give their float32 copies' norm, and
mixed kinds may differ from it in the last bit.

Arithmetic: hyper-parameters are combined in double and rounded once to the arrays' dtype (to
float32 below it); each element then goes through the formula below in that dtype, in the
reference framework's order of operations, with no FMA contraction, so results are the same bits
on every ISA and every thread count. A weight decay that cannot change a parameter (a zero
coefficient) is skipped.

Guards, in every function (README, "Guards"), applied to the gradients before the formula::

    g <- g / loss_scale                                  (loss-scale unscaling)
    norm = sqrt(sum of g*g over every array)             if max_grad_norm is not None
    g <- g * min(1, max_grad_norm / (norm + 1e-6))       (torch.nn.utils.clip_grad_norm_)

``nonfinite`` decides what a NaN or an infinity in ``grads`` does: ``"ignore"`` (the default:
no check, as in PyTorch), ``"skip"`` (nothing is modified and the result says ``skipped``) or
``"raise"`` (``FloatingPointError``, nothing modified). ``1/loss_scale`` and the clipping
coefficient are multiplied in double and rounded once to the arrays' dtype. The norm is summed
in float64 over fixed blocks, so it is the same for every thread count and ISA. A check or a norm
costs one read pass over the gradients before the update (one in all when both are asked for).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from . import _core
from ._backend import device_step
from ._core import ema_sgd_, keras_sgd_, sgd_
from .guards import StepResult, nonfinite_error
from .storage import QuantizedBuffer

#: A NumPy array of a dtype the kernels update: float32, float64, float16, or bfloat16
#: (ml_dtypes', which NumPy's type stubs cannot name).
HostArray = (NDArray[np.float32] | NDArray[np.float64] | NDArray[np.float16]
             | NDArray[np.void])


class CudaArray(Protocol):
    """The static type of a GPU array: anything with ``__cuda_array_interface__`` (CuPy arrays,
    PyTorch tensors, Numba device arrays). Its dtype, device and layout are checked at run time;
    a producer with only ``__dlpack__`` works too, but needs a ``cast`` to satisfy a checker."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...


#: A parameter, gradient or buffer: a NumPy array, or a GPU array (all of one kind in a step).
Array = HostArray | CudaArray
#: A list or tuple of arrays (any other sequence is rejected: it might be an array's rows).
Arrays = list[Array] | tuple[Array, ...]
#: A momentum buffer: an array, or an 8-bit :class:`~fastmomentum.storage.QuantizedBuffer`.
Buffer = Array | QuantizedBuffer
#: A list or tuple of buffers.
Buffers = list[Buffer] | tuple[Buffer, ...]
#: Kahan compensations: one array (or None) per parameter.
Compensations = list[HostArray | None] | tuple[HostArray | None, ...]
Rounding = Literal["nearest", "stochastic"]
#: One bool for every array, or one per array (a list or tuple, as for the arrays).
FirstStep = bool | list[bool] | tuple[bool, ...]
WeightDecayMode = Literal["coupled", "decoupled", "sgdw"]

__all__ = ["Array", "Arrays", "Buffer", "Buffers", "Compensations", "CudaArray", "FirstStep",
           "HostArray", "Rounding", "WeightDecayMode", "ema_sgd_", "keras_sgd_", "sgd_"]

# What the compiled entry points build results and errors from, and ask about device arrays.
_core._bind(StepResult, nonfinite_error, device_step)
# They are this module's functions (help(), documentation tools, pickling by name).
for _entry in (sgd_, keras_sgd_, ema_sgd_):
    _entry.__module__ = __name__


def _doc(name: str, parameters: str, doc: str) -> None:
    """Sets an entry point's docstring, after its signature for ``inspect``."""
    _core._set_doc(name, f"{name}({parameters})\n--\n\n{doc}")


_doc("sgd_",
     "params, grads, buffers=None, *, lr, momentum=0.0, dampening=0.0, "
     "nesterov=False, weight_decay=0.0, weight_decay_mode='coupled', "
     "schedule_multiplier=1.0, maximize=False, first_step=False, "
     "nonfinite='ignore', max_grad_norm=None, loss_scale=1.0, compensations=None, "
     "rounding='nearest', seed=0, step=0",
     """One momentum-SGD step in PyTorch's convention (the buffer ``b`` holds no learning rate).

For each parameter ``p`` with gradient ``g`` and buffer ``b``::

    g <- -g                          if maximize
    g <- g + wd*p                    if weight_decay_mode == "coupled"    (L2, torch default)
    p <- p * (1 - lr*wd)             if weight_decay_mode == "decoupled"  (torch AdamW form)
    p <- p * (1 - s*wd)              if weight_decay_mode == "sgdw"  (s: schedule_multiplier)
    if momentum != 0:
        b <- g                       on this array's first step (first_step)
        b <- momentum*b + (1-dampening)*g   otherwise
        g <- g + momentum*b          if nesterov, else g <- b
    p <- p - lr*g

Args:
    params: parameters, updated in place.
    grads: gradients, same shapes and dtypes as ``params``; only read.
    buffers: momentum buffers, updated in place; required when ``momentum != 0`` (start them
        with ``np.zeros_like(p)``), unused otherwise.
    lr: learning rate, finite and >= 0.
    momentum, dampening: in [0, 1]. Nesterov needs ``momentum > 0`` and ``dampening == 0``.
    weight_decay: finite and >= 0, applied as ``weight_decay_mode`` says.
    schedule_multiplier: the SGDW schedule multiplier ``s``; used by ``"sgdw"`` only.
    maximize: ascend instead of descend.
    first_step: ``True`` where an array takes its first step (PyTorch's ``b <- g`` rule: no
        dampening on step 1), as one bool or one per array. With the default ``False`` and
        a zero buffer, step 1 gives ``b = (1-dampening)*g`` (PyTorch's value when dampening
        is 0).
    nonfinite, max_grad_norm, loss_scale: the guards (module docstring). ``max_grad_norm``
        is a number >= 0 (``inf`` measures the norm without clipping); ``loss_scale`` is
        finite and > 0.
    compensations, rounding, seed, step: parameters below float32 (module docstring, "Storage
        below float32").

Returns:
    A :class:`~fastmomentum.guards.StepResult`: whether the step was skipped, and the
    gradients' norm when ``max_grad_norm`` is given.
""")
_doc("keras_sgd_",
     "params, grads, velocities=None, *, lr, momentum=0.0, nesterov=False, "
     "weight_decay=0.0, weight_decay_mode='decoupled', "
     "schedule_multiplier=1.0, maximize=False, nonfinite='ignore', "
     "max_grad_norm=None, loss_scale=1.0, global_clipnorm=None, clipvalue=None, "
     "compensations=None, rounding='nearest', seed=0, step=0",
     """One SGD step in Keras' convention (Sutskever et al. 2013: the velocity holds the lr).

For each parameter ``p`` with gradient ``g`` and velocity ``v`` (start with ``v = 0``)::

    p <- p - (p*wd)*lr               if weight_decay_mode == "decoupled"  (Keras' weight_decay)
    p <- p - (p*wd)*s                if weight_decay_mode == "sgdw"  (s: schedule_multiplier)
    g <- g + wd*p                    if weight_decay_mode == "coupled"
    if momentum != 0:
        v <- momentum*v - lr*g
        p <- p + momentum*v - lr*g   if nesterov, else p <- p + v
    else:
        p <- p - lr*g

At a constant lr this is the same trajectory as :func:`sgd_` with ``v = -lr*b``; the two split
when the lr changes. ``velocities`` is required when ``momentum != 0``. ``maximize`` negates g
first. ``nesterov=True`` with ``momentum == 0`` is plain SGD, as in Keras. See :func:`sgd_` for
the argument rules, the guards and the result.

Keras' gradient clipping, in Keras' formulas, fused into the step (at most one of the two, and
not with ``max_grad_norm``):

    global_clipnorm: a finite number > 0: ``g <- g * c*min(1/‖g‖₂, 1/c)`` (Keras'
        ``clip_by_global_norm``, applied at every step: 1 only up to rounding below ``c``; NaN
        for a non-finite norm), with the norm over every gradient of the call, after the loss
        scale's division, summed in float64 (Keras sums in the gradients' dtype). The norm is
        returned in the result.
    clipvalue: a finite number > 0: ``g <- clip(g, -v, v)`` element by element, with ``v``
        rounded to the arrays' dtype (a NaN stays NaN).
""")
_doc("ema_sgd_",
     "params, grads, buffers=None, *, lr, beta, weight_decay=0.0, "
     "weight_decay_mode='coupled', schedule_multiplier=1.0, maximize=False, "
     "nonfinite='ignore', max_grad_norm=None, loss_scale=1.0, compensations=None, "
     "rounding='nearest', seed=0, step=0",
     """One step of EMA momentum, the ``(1 - beta)`` form: start the buffers at zero, then::

    b <- beta*b + (1-beta)*g
    p <- p - lr*b

It is :func:`sgd_`'s update with ``momentum = dampening = beta`` and no first-step copy (so
step 1 gives ``b = (1-beta)*g``, not PyTorch's ``b = g``). Weight decay and ``maximize`` act as
in :func:`sgd_`. With ``beta == 0`` it is plain SGD and the buffers are not used. See
:func:`sgd_` for the guards and the result.
""")
