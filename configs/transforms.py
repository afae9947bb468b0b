"""User functions for the ``python`` stage of the jobs in this folder.

A ``python`` stage names one of them as ``"transforms:NAME"``; it is called with the chunk as a
pandas DataFrame and the stage's ``params`` as keyword arguments, and returns a DataFrame.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def add_price_band(df: pd.DataFrame, cheap_below: float) -> pd.DataFrame:
    """Add a string column ``price_band``: "cheap" where ``price < cheap_below``, else "regular".

    Rows without a price get a null band. The input frame is left unchanged.
    """
    price = pd.to_numeric(df["price"], errors="coerce")
    band = np.where(price < cheap_below, "cheap", "regular").astype(object)
    band[price.isna().to_numpy()] = None
    return df.assign(price_band=pd.Series(band, index=df.index, dtype=object))
