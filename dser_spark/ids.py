"""Source ids to dense indexes: the position of each id in a sorted id array.

Every model keeps its users and items as sorted id arrays (the dense index of
an id is its rank); this one lookup serves training, evaluation and serving.
"""
from __future__ import annotations

import numpy as np


def lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index, found) of each of ``ids`` in ``sorted_ids``.

    Where an id is absent, ``found`` is False and its index is a valid but
    meaningless position (so it can still be used to gather, then masked).
    """
    ids = np.asarray(ids)
    if not len(sorted_ids):
        return np.zeros(ids.shape, dtype=np.int64), np.zeros(ids.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return pos, sorted_ids[pos] == ids


def known_each(sorted_ids: np.ndarray, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """For each of ``arrays``, the indexes of its ids found in ``sorted_ids``, in order (one lookup for all)."""
    if not arrays:
        return []
    ends = np.cumsum([len(a) for a in arrays])
    pos, found = lookup(sorted_ids, np.concatenate(arrays))
    found_before = np.r_[0, np.cumsum(found)]
    return np.split(pos[found], found_before[ends[:-1]])
