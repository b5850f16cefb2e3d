"""Thread counts of torch and of numpy's BLAS, set together so that runs are comparable and not oversubscribed."""

from __future__ import annotations

import ctypes
import functools
import glob
import os
from collections.abc import Callable

import numpy as np
import torch

_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")


@functools.cache
def _numpy_blas_setter() -> Callable[[int], None] | None:
    """The thread setter of the OpenBLAS bundled with numpy wheels, if there is one."""
    for path in glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "*openblas*")):
        lib = ctypes.CDLL(path)
        for name in _SETTERS:
            if hasattr(lib, name):
                return getattr(lib, name)
    return None


def set_threads(n: int) -> None:
    """Use n intra-op threads in torch and in numpy's BLAS (when it can be reached)."""
    torch.set_num_threads(n)
    setter = _numpy_blas_setter()
    if setter is not None:
        setter(n)
