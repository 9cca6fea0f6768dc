"""The Makefile passes what a person types on to the scripts behind its targets (dry runs: nothing is started)."""

from __future__ import annotations

import subprocess

import pytest

from conftest import REPO


def dry_run(*args: str) -> list[str]:
    """The recipe lines `make` would run, without running them."""
    out = subprocess.run(["make", "-n", "-s", "-C", str(REPO), *args], capture_output=True, text=True, check=True)
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "command"),
    [
        ((), "python scripts/stack.py down"),
        (("SERVICES=mlflow",), "python scripts/stack.py down mlflow"),
        (("SERVICES=prefect mlflow",), "python scripts/stack.py down prefect mlflow"),
    ],
)
def test_stack_down_stops_the_services_named(args: tuple[str, ...], command: str) -> None:
    """docs/deployment.md restarts one server with `make stack-down SERVICES=mlflow`; without it, all stop."""
    assert dry_run("stack-down", *args) == [command]


def test_help_lists_every_command_in_groups_within_80_columns_with_real_addresses() -> None:
    out = subprocess.run(["make", "-s", "-C", str(REPO), "help", "HOST=127.0.0.9"], capture_output=True, text=True)
    lines = out.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "$(" not in out.stdout and "http://127.0.0.9:5000" in out.stdout
    groups = [line for line in lines if line and not line.startswith(" ")]
    assert groups == ["Run the pipeline", "See the results", "Team stack (docs/deployment.md)", "Development"]
    targets = {line.split()[1] for line in lines if line.startswith("  make ")}
    phony = (REPO / "Makefile").read_text().split(".PHONY:", 1)[1].split("\n\n", 1)[0]
    assert targets == set(phony.replace("\\", " ").split())


def test_clean_deletes_no_file_that_git_tracks() -> None:
    """`make clean` removes what DVC can restore; metrics/ and plots/ are committed results, not scratch."""
    removed = [word for line in dry_run("clean") for word in line.split()[2:]]  # rm -rf PATH ...
    assert removed
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "--", *removed], capture_output=True, text=True)
    assert tracked.stdout == ""
