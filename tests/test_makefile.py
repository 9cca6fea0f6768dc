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
