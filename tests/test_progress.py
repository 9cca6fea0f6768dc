"""Long work reports progress with an ETA: a bar on a terminal, plain lines in a log (sslops.outputs.progress)."""

from __future__ import annotations

from sslops.outputs.progress import LogLines, progress_bar


def test_in_a_log_progress_is_plain_lines_with_an_eta(capsys, monkeypatch):
    """stderr is a pipe under pytest: no carriage returns, one line per interval and one at the end."""
    clock = iter([0.0, 10.0, 40.0, 50.0, 70.0])  # start, then one reading per update
    monkeypatch.setattr("sslops.outputs.progress.time.monotonic", lambda: next(clock))
    with progress_bar(4, "fine-tune", "step") as bar:
        assert isinstance(bar, LogLines)
        bar.set_postfix(loss="0.5")
        for _ in range(4):
            bar.update()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "fine-tune: 2/4 step (50 %), 0.1 step/s, ETA 0:40, loss=0.5",  # 30 s after the start: a line
        "fine-tune: 4/4 step (100 %), 0.1 step/s, ETA 0:00, loss=0.5",  # the last step: a line
    ]


def test_a_disabled_bar_prints_nothing(capsys):
    with progress_bar(3, "prepare", "img", enabled=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
