"""The bytes of the numpy arrays a Python object holds, found by walking its attributes (numpy only).

What a fitted scikit-learn estimator costs beyond its fixed cost per model is its arrays:
coefficients, support vectors, tree nodes. They sit in the instance `__dict__`s of the
estimator and of what it holds (a Pipeline's steps, a forest's trees), in lists, tuples and
dicts; Cython objects without a `__dict__` (sklearn's `Tree`) expose them through the state
they pickle, which for `Tree` is views of its own buffers, not copies. Each array counts
once (by identity) and a view counts its base's bytes once too.
"""

from __future__ import annotations

import numpy as np

#: Objects visited at most: a model of millions of Python objects is sized by the first ones.
MAX_OBJECTS = 200_000
_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None), type)


def array_bytes(root: object) -> int:
    """Bytes of every distinct numpy array reachable from `root` (see the module docstring)."""
    seen: dict[int, object] = {}  # holding each object: a reduced state's id is not reused meanwhile
    counted: dict[int, np.ndarray] = {}
    total = 0
    stack = [root]
    while stack and len(seen) < MAX_OBJECTS:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _SCALARS):
            continue
        seen[id(obj)] = obj
        if isinstance(obj, np.ndarray):
            owner = _owner(obj)
            if id(owner) not in counted:
                counted[id(owner)] = owner
                total += owner.nbytes
            if obj.dtype == object:
                stack.extend(obj.ravel().tolist())
            continue
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            stack.extend(_parts(obj))
    return total


def _owner(array: np.ndarray) -> np.ndarray:
    """The array that owns a view's memory (itself when it owns its data)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _parts(obj: object) -> list:
    attributes = getattr(obj, "__dict__", None)
    if isinstance(attributes, dict):
        return list(attributes.values())
    try:
        reduced = obj.__reduce_ex__(2)  # what pickle would save: a Cython object's state
    except (TypeError, ValueError, AttributeError):  # not picklable: nothing more to find
        return []
    if isinstance(reduced, tuple) and len(reduced) > 2:
        return [reduced[2]]
    return []
