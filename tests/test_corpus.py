"""The differential suite on third-party files (see tests/corpus.py and docs/compatibility.md)."""

from __future__ import annotations

import collections
import json

import pytest

from tests import corpus, corpus_table

pytestmark = pytest.mark.skipif(not corpus.available(),
                                reason=f"the third-party corpus is not at {corpus.CORPUS} (../shared/corpus)")

FILES = corpus.corpus_files() if corpus.available() else []


@pytest.mark.parametrize("rel", FILES)
def test_corpus_file_equals_the_reference_or_is_refused_with_file_and_line(rel):
    v = corpus_table.verdict(rel)
    assert not v.problems, "\n".join(v.problems)


def test_compatibility_page_is_current():
    current = corpus_table.PAGE.read_text(encoding="utf-8")
    assert current == corpus_table.render(), "docs/compatibility.md is not current: run python -m tests.corpus_table"


@pytest.mark.slow
@pytest.mark.parametrize("rel", FILES)
def test_corpus_file_at_every_chunk_size_and_worker_count(rel):
    v = corpus.judge(rel)   # 4 KiB, 64 KiB and the default, with 1 and 2 workers
    assert not v.problems, "\n".join(v.problems)
    assert v.outcome == corpus_table.verdict(rel).outcome


@pytest.mark.parametrize("rel", FILES)
def test_corpus_file_copied_twelve_times_gives_each_of_its_rows_twelve_times(rel):
    """Many small files (grouped tasks, a plan cut while the first chunks run, a header reused): a
    folder of 12 copies of a file gives exactly 12 times what the file gives alone."""
    header = corpus.reference(rel).header
    one = corpus.run_tool(rel, strings=True, policy="quarantine", chunk_bytes=None, workers=2, header=header)
    many = corpus.run_tool(rel, strings=True, policy="quarantine", chunk_bytes=None, workers=2, header=header,
                           copies=12)
    assert many.code == one.code, many.err
    if one.code == 0:
        assert corpus._sorted(many.rows) == corpus._sorted(one.rows * 12)
        assert len(many.rejects) == 12 * len(one.rejects)
        assert {k: 12 * v for k, v in one.counts.items()} == many.counts


@pytest.mark.parametrize("rel", FILES)
@pytest.mark.parametrize("strings", [True, False], ids=["strings", "inferred"])
def test_corpus_file_through_a_select_of_two_columns_gives_those_columns_of_every_row(rel, strings):
    """A run reads only the columns its stages read: through ``select: [last, first]`` a file gives the
    two columns of the rows it gives whole, and the same rejects, except rows rejected whole for a
    value of a column it no longer reads, which it now writes."""
    header = corpus.reference(rel).header
    if len(header) < 2:
        pytest.skip("fewer than two columns")
    pair = [header[-1], header[0]]
    whole = corpus.run_tool(rel, strings=strings, policy="quarantine", chunk_bytes=None, workers=2, header=header)
    two = corpus.run_tool(rel, strings=strings, policy="quarantine", chunk_bytes=None, workers=2, header=header,
                          stages=[{"select": pair}])
    assert two.code == whole.code, two.err
    if whole.code != 0:
        return
    projected = [{k: r[k] for k in pair} for r in whole.rows]
    assert two.counts["rows_read"] == whole.counts["rows_read"]
    whole_lines = {r["line"] for r in whole.rejects}
    two_lines = {r["line"] for r in two.rejects}
    if strings:   # no value can fail a type: the same rows, the same rejects
        assert corpus._sorted(two.rows) == corpus._sorted(projected)
        assert two_lines == whole_lines
        return
    assert two_lines <= whole_lines
    assert len(two.rows) == len(whole.rows) + len(whole_lines - two_lines)
    def key(row: dict) -> str:   # NaN equals NaN here
        return json.dumps(row, sort_keys=True, default=str)

    missing = collections.Counter(map(key, projected)) - collections.Counter(map(key, two.rows))
    assert not missing, f"rows of the whole run missing from the run through select: {list(missing)[:3]}"


@pytest.fixture(scope="module")
def scheduler():
    """A LocalCluster of 2 worker processes, for the Dask runs of this module."""
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address="127.0.0.1:0", silence_logs=40)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.mark.parametrize("rel", FILES)
def test_corpus_file_copied_twelve_times_on_dask_gives_the_local_rows_twelve_times(rel, scheduler):
    """The Dask executor groups small files as the local one does: 12 copies of a file in one folder
    give 12 times what the file gives alone on the local executor, in few tasks and part files."""
    header = corpus.reference(rel).header
    one = corpus.run_tool(rel, strings=True, policy="quarantine", chunk_bytes=None, workers=2, header=header)
    many = corpus.run_tool(rel, strings=True, policy="quarantine", chunk_bytes=None, workers=2, header=header,
                           copies=12, dask=scheduler)
    assert many.code == one.code, many.err
    if one.code == 0:
        assert corpus._sorted(many.rows) == corpus._sorted(one.rows * 12)
        assert len(many.rejects) == 12 * len(one.rejects)
        assert {k: 12 * v for k, v in one.counts.items()} == many.counts
