"""Partition directory names, read back with pyarrow's hive partitioning as the reference."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from pipeline.output.write import MAX_PARTITION_VALUE, NULL_PARTITION, partition_dir

HIVE = ds.partitioning(pa.schema([("k", pa.string())]), flavor="hive")   # URI-decodes, knows the null name


def read_back(directory: str):
    keys = ds.get_partition_keys(HIVE.parse(directory.replace(os.sep, "/") + "/part-0.parquet"))
    return keys["k"]


@pytest.mark.parametrize("value,directory", [
    ("DE", "k=DE"),
    ("a b", "k=a%20b"),
    ("a/b", "k=a%2Fb"),
    ("..", "k=%2E%2E"),
    (".", "k=%2E"),
    ("x=y", "k=x%3Dy"),
    ("100%", "k=100%25"),
    ("é", "k=%C3%A9"),
    ("a\\b", "k=a%5Cb"),
    (None, f"k={NULL_PARTITION}"),
    ("", f"k={NULL_PARTITION}"),        # pyarrow cannot tell an empty string from null either
])
def test_one_value(value, directory):
    assert partition_dir(("k",), (value,)) == directory
    assert read_back(directory) == (value or None)


@pytest.mark.parametrize("value", ["2026-11-02", "../../etc", "/abs", "a/../../b", "~", "CON", "\x00x", "line\nbreak"])
def test_no_value_leaves_the_dataset_root(value, tmp_path):
    directory = partition_dir(("k",), (value,))
    assert os.sep not in directory.removeprefix("k=")
    resolved = os.path.realpath(os.path.join(tmp_path, directory))
    assert os.path.dirname(resolved) == os.path.realpath(tmp_path)
    assert read_back(directory) == value


@pytest.mark.parametrize("values,directory", [
    ((2026, 11), os.path.join("year=2026", "month=11")),
    ((True, 1.5), os.path.join("year=True", "month=1.5")),
    ((None, "x"), os.path.join(f"year={NULL_PARTITION}", "month=x")),
])
def test_several_columns_nest_in_order(values, directory):
    assert partition_dir(("year", "month"), values) == directory


def test_column_names_are_escaped_too():
    assert partition_dir(("a/b",), ("x",)) == "a%2Fb=x"


def test_no_columns_is_the_root():
    assert partition_dir((), ()) == ""


def test_long_values_are_cut_and_stay_distinct():
    a, b = "x" * 500 + "a", "x" * 500 + "b"
    da, db = partition_dir(("k",), (a,)), partition_dir(("k",), (b,))
    assert da != db
    assert len(da) - len("k=") <= MAX_PARTITION_VALUE and len(db) == len(da)  # under NAME_MAX (255)
    assert partition_dir(("k",), (a,)) == da              # the same value, the same directory
    short = "y" * MAX_PARTITION_VALUE                      # at the limit: kept whole
    assert read_back(partition_dir(("k",), (short,))) == short


def test_row_groups_encoded_on_the_writer_thread_read_back_and_a_failure_is_raised(tmp_path):
    """The writer's Encoder: row groups written in order, the file complete after close; an error
    on the encoding thread is raised to the writer by its next call."""
    import pyarrow.parquet as pq

    from pipeline.output.write import DatasetWriter, WriterSettings

    table = pa.table({"id": pa.array(range(10_000), pa.int64()), "s": pa.array([f"v{i % 7}" for i in range(10_000)])})
    out = DatasetWriter(WriterSettings("job", "run1", str(tmp_path / "parts"), table.schema, row_group_rows=1000))
    for start in range(0, 10_000, 700):
        out.write(table.slice(start, 700), "test")
    files = out.close()
    assert sum(f.rows for f in files) == 10_000
    back = pq.read_table(tmp_path / "parts" / files[0].path)
    assert back.equals(table)
    assert pq.ParquetFile(tmp_path / "parts" / files[0].path).metadata.num_row_groups == 10

    class Broken:
        def write_table(self, table, row_group_size):
            raise OSError(28, "No space left on device")

    failing = DatasetWriter(WriterSettings("job", "run2", str(tmp_path / "parts2"), table.schema, row_group_rows=1000))
    failing.write(table.slice(0, 1500), "test")      # opens the file, queues one row group
    failing.partitions[""].open.writer = Broken()
    def write_the_rest() -> None:
        for start in range(1500, 10_000, 700):
            failing.write(table.slice(start, 700), "test")
        failing.encoder.drain()

    with pytest.raises(OSError, match="No space left"):
        write_the_rest()


def test_once_every_chunk_is_handed_out_rows_are_written_in_smaller_row_groups(tmp_path):
    """``ending``: what waits when the last chunk arrives is at most an eighth of a row group, so the
    run's tail encodes little; the rows and their order are unchanged."""
    import pyarrow.parquet as pq

    from pipeline.output.write import TAIL_FRACTION, DatasetWriter, WriterSettings

    table = pa.table({"id": pa.array(range(20_000), pa.int64()), "s": pa.array([f"v{i % 7}" for i in range(20_000)])})
    out = DatasetWriter(WriterSettings("job", "run1", str(tmp_path / "parts"), table.schema, row_group_rows=8000))
    for start in range(0, 11_000, 500):
        out.write(table.slice(start, 500), "test")
    assert out.partitions[""].rows == 3000          # one row group of 8,000 written, 3,000 waiting
    out.ending()
    assert out.partitions[""].rows == 0             # 3,000 >= 8,000 / 8: written out at once
    for start in range(11_000, 20_000, 500):
        out.write(table.slice(start, 500), "test")
        assert out.partitions[""].rows < 8000 // TAIL_FRACTION
    files = out.close()
    meta = pq.ParquetFile(tmp_path / "parts" / files[0].path).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes[:2] == [8000, 3000] and all(n <= 8000 // TAIL_FRACTION for n in sizes[2:])
    assert sum(sizes) == 20_000
    assert pq.read_table(tmp_path / "parts" / files[0].path).equals(table)


def test_each_row_group_is_flushed_to_disk_as_it_is_written_not_all_at_the_close(tmp_path, monkeypatch):
    """The part file's data reaches the disk row group by row group on the encoding thread, so the
    fsync at the close (on the run's critical path) has only the last one left."""
    import os

    import pyarrow.parquet as pq

    from pipeline.output import write as write_mod
    from pipeline.output.write import DatasetWriter, WriterSettings

    flushed: list[int] = []        # the file's size at each fdatasync
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(write_mod.os, "fdatasync", fdatasync)
    table = pa.table({"id": pa.array(range(10_000), pa.int64())})
    out = DatasetWriter(WriterSettings("job", "run1", str(tmp_path / "parts"), table.schema, row_group_rows=2000))
    for start in range(0, 10_000, 1000):
        out.write(table.slice(start, 1000), "test")
    files = out.close()
    assert pq.ParquetFile(tmp_path / "parts" / files[0].path).metadata.num_row_groups == 5
    assert len(flushed) == 5 and flushed == sorted(flushed) and flushed[0] > 0
    assert pq.read_table(tmp_path / "parts" / files[0].path).equals(table)
