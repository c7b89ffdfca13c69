"""`bench --docs`: a command rewrites its own block of figures in a doc and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.bench.docs import END, command_of, write_figures
from stream.errors import UserError
from tests.conftest import run_cli

REPLAY = "socialstream bench replay --repeat 2"


def test_the_command_is_what_was_typed_less_where_figures_go() -> None:
    assert command_of(["bench", "replay", "--repeat", "2", "--docs", "d.md", "--json"]) == REPLAY
    assert command_of(["bench", "replay", "--docs=d.md", "--repeat", "2"]) == REPLAY
    assert command_of(["bench", "replay", "--media", "a b.mp4"]) == (
        "socialstream bench replay --media 'a b.mp4'")
    assert command_of(["bench", "replay", "-vv", "--repeat", "2", "--verbose"]) == REPLAY


def test_a_block_is_replaced_in_place_and_other_blocks_are_kept(tmp_path: Path) -> None:
    doc = tmp_path / "bench.md"
    other = "<!-- figures: socialstream bench view -->\n| old view |\n" + END
    doc.write_text(f"# Benchmarks\n\nBefore.\n\n<!-- figures: {REPLAY} -->\n| stale |\n"
                   f"{END}\n\nBetween.\n\n{other}\n\nAfter.\n")
    write_figures(doc, REPLAY, {"rtf": 0.123456, "turns": 7})
    text = doc.read_text()
    assert "| stale |" not in text and text.count(f"<!-- figures: {REPLAY} -->") == 1
    assert "| rtf | 0.1235 |" in text and "| turns | 7 |" in text
    assert "cores" in text and "commit" in text  # says on what machine, at what code
    assert text.startswith("# Benchmarks\n\nBefore.\n\n<!-- figures")
    assert f"{END}\n\nBetween.\n\n{other}\n\nAfter.\n" in text
    write_figures(doc, REPLAY, {"rtf": 0.2})  # again: still one block, the new figure
    assert doc.read_text().count(END) == 2 and "| rtf | 0.2 |" in doc.read_text()


def test_a_doc_without_the_block_gets_it_appended(tmp_path: Path) -> None:
    doc = tmp_path / "new.md"
    write_figures(doc, REPLAY, {"rtf": 1.0})
    write_figures(doc, "socialstream bench view", {"rtf": 2.0})
    text = doc.read_text()
    assert text.index(REPLAY) < text.index("bench view") and text.count(END) == 2


def test_an_unclosed_block_is_an_error_that_names_the_file(tmp_path: Path) -> None:
    doc = tmp_path / "open.md"
    doc.write_text(f"<!-- figures: {REPLAY} -->\n| figure |\n")
    with pytest.raises(UserError, match=r"open\.md.*no <!-- /figures -->"):
        write_figures(doc, REPLAY, {"rtf": 1.0})
    assert doc.read_text() == f"<!-- figures: {REPLAY} -->\n| figure |\n"  # untouched


def test_a_doc_it_cannot_write_is_refused_before_the_benchmark_runs(tmp_path: Path) -> None:
    """An hour's soak must not end in a doc it cannot write: one line, exit 2, at once
    (the benchmark, minutes long, never started: nothing was measured or printed)."""
    done = run_cli("bench", "replay", "--docs", str(tmp_path / "gone" / "bench.md"), "--json",
                   timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert f"--docs {tmp_path / 'gone' / 'bench.md'}: there is no folder" in done.stderr
    doc = tmp_path / "open.md"
    doc.write_text("<!-- figures: socialstream bench replay -->\n| figure |\n")
    done = run_cli("bench", "replay", "--docs", str(doc), timeout=60)
    assert done.returncode == 2 and "has no <!-- /figures -->" in done.stderr
