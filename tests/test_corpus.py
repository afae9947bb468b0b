"""The differential suite on third-party files (see tests/corpus.py and docs/compatibility.md)."""

from __future__ import annotations

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
