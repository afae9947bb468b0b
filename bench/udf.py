"""The W2 user function: per-row Python work on a pandas DataFrame.

Every engine of W2 applies this same function. The harness copies this file next to the
pipeline's job file (a ``python`` stage loads its module from there), so it imports nothing but
the standard library and pandas.
"""

from __future__ import annotations

import hashlib
import unicodedata

import pandas as pd

NEW_COLUMNS = ("user_product_hash", "product_norm")


def normalise(text):
    """``"  Café-Crème "`` -> ``"cafe_creme"``: accents dropped, lower case, words joined by ``_``."""
    if not isinstance(text, str):
        return None
    decomposed = unicodedata.normalize("NFKD", text)
    ascii_text = decomposed.encode("ascii", "ignore").decode("ascii")
    return "_".join(ascii_text.lower().replace("-", " ").split())


def user_product_hash(user_id, product, key: bytes = b"") -> str:
    """16 hex digits of a keyed blake2b of ``"user_id|product"``."""
    return hashlib.blake2b(f"{user_id}|{product}".encode(), digest_size=8, key=key).hexdigest()


def enrich(df: pd.DataFrame, salt: str = "") -> pd.DataFrame:
    """The frame with two new text columns, computed row by row in Python."""
    key = salt.encode()
    users = df["user_id"].tolist()
    products = df["product"].tolist()
    digests = [user_product_hash(u, p, key) for u, p in zip(users, products)]
    norms = [normalise(p) for p in products]
    # dtype "str" keeps the columns text even for an empty frame (an empty list would be float64)
    return df.assign(user_product_hash=pd.Series(digests, index=df.index, dtype="str"),
                     product_norm=pd.Series(norms, index=df.index, dtype="str"))
