"""Writing the output: Parquet part files in staging, the atomic publish, the job lock."""
