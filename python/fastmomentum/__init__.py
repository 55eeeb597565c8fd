"""fastmomentum: fused SIMD/OpenMP momentum-SGD updates for NumPy arrays, in place.

The public names; see :mod:`fastmomentum.functional` for the update steps.
"""

from . import functional
from ._config import get_num_threads, set_num_threads, show_config
from ._core import __version__

__all__ = ["__version__", "functional", "get_num_threads", "set_num_threads", "show_config"]
