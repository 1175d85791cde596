"""The one error of the prepare stage."""
from __future__ import annotations


class DataError(ValueError):
    """Raw data is missing, unreadable or too dirty; the message names file and line."""
