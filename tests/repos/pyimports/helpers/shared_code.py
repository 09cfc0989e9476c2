"""Beside config.pbtxt: the stub puts the model folder on sys.path too."""

import numpy as np


def as_float(array):
    return np.asarray(array, dtype=np.float32)
