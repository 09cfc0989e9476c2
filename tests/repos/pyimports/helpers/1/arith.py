"""Beside model.py: the stub puts the version folder on sys.path."""

import numpy as np


def add(a, b):
    return np.add(a, b)


def sub(a, b):
    return np.subtract(a, b)
