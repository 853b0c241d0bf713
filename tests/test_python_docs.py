"""docs/python.md: its worked example runs as a doctest, against the installed code."""

from __future__ import annotations

import doctest
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "python.md"


def test_python_md_examples_run(tmp_path, monkeypatch):
    monkeypatch.setenv("NNSWEEP_CACHE", str(tmp_path))  # the page's default cache folder, kept out of ~/.cache
    result = doctest.testfile(str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted > 10 and result.failed == 0, result
