"""What the prepare stage returns, whatever the source: lazy DataFrames the caller writes."""
from __future__ import annotations

from dataclasses import dataclass, field

from pyspark.sql import DataFrame


@dataclass
class Prepared:
    """The prepare stage's output; the caller writes the tables."""

    interactions: DataFrame
    items: DataFrame
    rejected_rows: DataFrame
    summary: dict
    id_maps: dict[str, DataFrame] = field(default_factory=dict)  # your own data: user_ids, item_ids (write last)
    _cached: DataFrame | None = field(default=None, repr=False)

    def unpersist(self) -> None:
        """Release the cached ratings once the tables are written."""
        if self._cached is not None:
            self._cached.unpersist()
