"""Small fit data without Spark: users walking the items in order from a random start."""
from __future__ import annotations

import numpy as np
import torch

from dser_spark.model import Inputs
from dser_spark.train import FitData


def fit_data(seed: int, users: int, items: int, longest: int = 12, windows: tuple[int, ...] = ()) -> FitData:
    """``users`` users (ids 101..) with 3..``longest`` - 1 consecutive items (ids 11..), Doc2Vec-like inputs."""
    rng = np.random.default_rng(seed)
    item_ids = np.arange(11, 11 + items)
    pos = [item_ids[(rng.integers(items) + np.arange(rng.integers(3, longest))) % items] for _ in range(users)]
    g = torch.Generator().manual_seed(seed)
    inputs = Inputs(torch.randn(users, 8, generator=g), None, torch.randn(items, 8, generator=g),
                    torch.randn(items, 8, generator=g), torch.randn(items, 4, generator=g))
    return FitData(np.arange(101, 101 + users), item_ids, pos, inputs, windows)
