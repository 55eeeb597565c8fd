"""fastmomentum: fused SIMD/OpenMP momentum-SGD updates for NumPy arrays, in place.

- :mod:`fastmomentum.functional`: in-place steps on lists of arrays (torch, keras, EMA forms);
- :class:`SGD`: a ``torch.optim.SGD``-compatible optimizer with parameter groups and state dicts;
- :mod:`fastmomentum.lr_scheduler`: PyTorch-compatible schedulers; :mod:`fastmomentum.schedules`:
  pure step -> value schedules (Keras / optax formulas);
- :mod:`fastmomentum.checkpoint`: ``.npz`` checkpoints without pickle; :func:`convert_state_dict`
  moves an optimizer's state between the torch and keras buffer layouts;
- :mod:`fastmomentum.flat`: many arrays as views into one contiguous block (one kernel span);
- :mod:`fastmomentum.storage`: state and parameters below float32 (bfloat16, float16, 8-bit
  :class:`QuantizedBuffer`), computed in float32;
- :class:`StepResult`: what a step did under its guards (non-finite gradients, clipping).
"""

from . import checkpoint, flat, functional, guards, lr_scheduler, schedules, storage
from ._config import get_num_threads, set_num_threads, show_config
from ._core import __version__
from .guards import StepResult
from .optim import SGD, convert_state_dict
from .storage import QuantizedBuffer

__all__ = [
    "SGD",
    "QuantizedBuffer",
    "StepResult",
    "__version__",
    "checkpoint",
    "convert_state_dict",
    "flat",
    "functional",
    "get_num_threads",
    "guards",
    "lr_scheduler",
    "schedules",
    "set_num_threads",
    "show_config",
    "storage",
]
