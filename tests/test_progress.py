import pytest

from llmcourse.progress import in_book_build, progress


def test_progress_yields_every_item(monkeypatch):
    monkeypatch.delenv("LLMCOURSE_BOOK_BUILD", raising=False)
    assert list(progress(range(5), desc="x", disable=True)) == [0, 1, 2, 3, 4]


def test_progress_in_book_build_prints_one_summary_line(monkeypatch, capsys):
    monkeypatch.setenv("LLMCOURSE_BOOK_BUILD", "1")
    assert in_book_build()
    assert sum(progress(range(50), desc="train")) == sum(range(50))
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.strip()]
    assert len(lines) == 1, out.out
    assert "train" in lines[0] and "50/50" in lines[0]
    assert "\r" not in out.out and out.err == ""


def test_progress_manual_bar_counts_updates(monkeypatch, capsys):
    monkeypatch.setenv("LLMCOURSE_BOOK_BUILD", "1")
    with progress(total=10, desc="steps") as bar:
        for _ in range(10):
            bar.update(1)
    assert "10/10" in capsys.readouterr().out


def test_progress_needs_an_iterable_or_total():
    with pytest.raises(ValueError, match="iterable or total"):
        progress()
    with pytest.raises(ValueError, match="total"):
        progress(total=-3)
