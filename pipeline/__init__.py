"""pipeline: config-driven, data-parallel file processing into Parquet."""

__version__ = "0.1.0"
