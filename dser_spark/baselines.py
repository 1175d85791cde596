"""Non-neural baselines: Spark MLlib ALS (implicit), tuned on the validation item.

The neural baselines (GMF, MLP, NeuMF) and the untrained recency score are the
DSER module itself with parts switched off (see ``model.baseline_config``);
ItemPop is one row of scores (``evaluate.FixedScores``). Only ALS needs its own
fitting code, and it is Spark's own implementation; its user factors never
leave the executors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from pyspark.ml.recommendation import ALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger("dser_spark")


@dataclass
class Factors:
    """ALS factors: the users' as a DataFrame (user_id, factors), left on the executors; the items' aligned
    with the item universe (zeros where unseen), small enough to ship."""

    users: DataFrame
    item_factors: np.ndarray
    params: dict


def fit_als(positives: DataFrame, item_ids: np.ndarray, rank: int, reg: float, alpha: float,
            max_iter: int, seed: int, blocks: int = 0) -> Factors:
    """Implicit-feedback ALS on (user_id, item_id) positives (confidence 1 + alpha), in ``blocks`` user and
    item blocks (0: one per core Spark has)."""
    data = positives.select("user_id", "item_id").distinct().withColumn("rating", F.lit(1.0))
    blocks = blocks or positives.sparkSession.sparkContext.defaultParallelism
    als = ALS(rank=rank, regParam=reg, alpha=alpha, maxIter=max_iter, implicitPrefs=True, seed=seed,
              userCol="user_id", itemCol="item_id", ratingCol="rating", coldStartStrategy="drop",
              nonnegative=False, numUserBlocks=blocks, numItemBlocks=blocks)
    model = als.fit(data)
    items = model.itemFactors.toPandas().set_index("id")
    item_f = np.zeros((len(item_ids), rank), dtype=np.float64)
    pos = items.index.get_indexer(item_ids)
    item_f[pos >= 0] = np.stack(items["features"].to_numpy()[pos[pos >= 0]])
    users = model.userFactors.select(F.col("id").alias("user_id"), F.col("features").alias("factors"))
    return Factors(users, item_f, {"rank": rank, "reg": reg, "alpha": alpha, "max_iter": max_iter,
                                   "blocks": blocks})
