"""ARCHITECTURE.md and CONTRIBUTING.md name files by path; every one of them exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
ROOTS = ("tui", "backends", "manifests", "sessions", "tests")
# A path starting at one of our packages: tui/widgets/bench/export.py, backends/kube_bench/, tui/cli/
PATH = re.compile(r"(?<![\w./])(?:" + "|".join(ROOTS) + r")/[\w/.\-]*[\w/]")


def named_paths(doc: str) -> list[str]:
    return sorted({m.group(0).rstrip(".") for m in PATH.finditer((REPO / doc).read_text(encoding="utf-8"))})


@pytest.mark.parametrize("doc", ["ARCHITECTURE.md", "CONTRIBUTING.md"])
def test_every_path_the_doc_names_exists(doc: str) -> None:
    paths = named_paths(doc)
    assert len(paths) >= 5, f"{doc} names almost no files: the pattern is broken"
    missing = [path for path in paths if not (REPO / path).exists()]
    assert not missing, f"{doc} names files that do not exist: {missing}"


def test_the_pattern_finds_a_missing_path(tmp_path: Path) -> None:
    text = "see `tui/widgets/bench_export.py` and tui/cli/ and backends/bench/export.py."
    found = sorted({m.group(0).rstrip(".") for m in PATH.finditer(text)})
    assert found == ["backends/bench/export.py", "tui/cli/", "tui/widgets/bench_export.py"]
    assert not (REPO / "tui/widgets/bench_export.py").exists()
