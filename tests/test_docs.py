"""The docs as a user meets them: a README that is a product page, and links that lead somewhere.

The README states what the product does today; history goes to CHANGELOG.md and measurements, each table with its
machine, to docs/benchmarks.md. A link or an anchor that a renamed heading broke is found here, not by a reader.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO
from sslops.commands.report import kind_of

README = REPO / "README.md"
DOCS = [README, REPO / "CHANGELOG.md", REPO / "flows" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

# What the README must not hold: dates, CPU model names, commit hashes, issue numbers (a run's record, not the
# product). Each pattern with an example it must catch, so a pattern that matches nothing cannot pass unnoticed.
FORBIDDEN = {
    "a date": (
        r"\b20\d\d-\d\d-\d\d\b|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]* 20\d\d\b",
        "measured 2026-11-29",
    ),
    "a CPU model": (r"\b(?:EPYC|Xeon|Ryzen|Zen ?\d|Core i\d|Sapphire Rapids|Ice Lake|Milan|Genoa)\b", "on the Zen 3"),
    "a commit or run hash": (r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", "at 46823b9"),
    "an issue number": (r"\bissues? #?\d+|\(#\d+\)|issue-\d+", "(issue 15)"),
}


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # a `# comment` in a code block is no heading
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_the_readme_is_a_product_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for what, (pattern, example) in FORBIDDEN.items():
        assert re.search(pattern, example), f"the pattern for {what} misses its own example"
        found = [m.group(0) for m in re.finditer(pattern, text)]
        assert not found, f"README.md holds {what}: {found}"
    for section in (
        "## Quickstart",
        "## Results at a glance",
        "## Your own images",
        "## Running on a GPU",
        "## Seeing results",
        "## Working as a team",
        "## Documentation",
        "## Development",
    ):
        assert section in text
    assert "make run" in text and "make test" in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(doc: Path) -> None:
    broken = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        if not path.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{doc.relative_to(REPO)}: {broken}"


def test_the_readme_names_machines_by_their_class() -> None:
    assert kind_of("AMD EPYC (family 25 model 17, avx512_bf16)") == "a CPU with avx512_bf16"
    assert kind_of("Intel Xeon (family 6 model 143)") == "a CPU"
    assert kind_of("NVIDIA H200") == "NVIDIA H200"


def test_the_reliability_count_is_the_tables() -> None:
    text = (REPO / "docs" / "reliability.md").read_text()
    rows = re.findall(r"^\| (\d+) \|", text, re.M)
    assert [int(r) for r in rows] == list(range(1, len(rows) + 1))
    counted = re.search(r"Count: (\d+) faults and bad inputs tried \(the rows above\); (\d+) end", text)
    assert counted and int(counted.group(1)) == int(counted.group(2)) == len(rows)


def test_the_generated_references_are_current() -> None:
    """docs/configuration.md and docs/cli.md are what `sslops docs` makes of today's params.yaml, schema, dvc.yaml
    and argument parser: a new key, a changed default or a new option without `sslops docs` fails here."""
    from sslops.cli import build_parser
    from sslops.commands.docs import CLI, CONFIGURATION, cli_markdown, configuration_markdown
    from sslops.config import Project

    assert (REPO / CONFIGURATION).read_text() == configuration_markdown(Project(REPO)), "run `sslops docs`"
    assert (REPO / CLI).read_text() == cli_markdown(build_parser()), "run `sslops docs`"


def test_every_params_key_is_in_the_configuration_reference() -> None:
    import yaml

    from sslops.config import flatten

    text = (REPO / "docs" / "configuration.md").read_text()
    keys = flatten(yaml.safe_load((REPO / "params.yaml").read_text()))
    # mappings of names (profiles, trials, the search's choices) are one row each: their entries are named by the user
    named = (
        "pretrain.profiles.",
        "finetune.trials.",
        "finetune.dense.trials.",
        "finetune.chosen.",
        "finetune.headline.",
    )
    missing = [k for k in keys if f"| `{k}` |" not in text and not k.startswith(named)]
    assert not missing and all(f"| `{k.rstrip('.')}` |" in text for k in named)


def test_types_ranges_and_comments_are_read_as_written() -> None:
    from typing import Annotated, Literal

    from pydantic import Field

    from sslops.commands.docs import _depends, yaml_comments
    from sslops.config.reference import describe
    from sslops.config.schema import Budget, NonNegativeInt, Probability

    assert describe(Probability) == "float in [0, 1]"
    assert describe(Annotated[float, Field(gt=0, lt=1)]) == "float in (0, 1)"
    assert describe(NonNegativeInt | None) == "int ≥ 0 or null"
    assert describe(Literal["auto", 1, 3]) == '"auto" | 1 | 3'
    assert describe(tuple[Probability, Probability]) == "[float in [0, 1], float in [0, 1]]"
    assert describe(list[Budget]) == "list of a fraction in (0, 1] or `N/class`"
    text = "a:   # first\n  b: 1  # one\n      # and more\n  c: 2\n# top\nd: 3\n"
    assert yaml_comments(text) == {"a": "first", "a.b": "one and more"}
    assert _depends("tasks.digits.budgets", "tasks.${key}.budgets") and _depends("tasks", "tasks.${key}.root")
    assert _depends("prepare.root", "prepare") and not _depends("prepare.root", "prepare.classes")


def test_docs_check_names_a_stale_page_and_writes_nothing(tmp_path: Path) -> None:
    from sslops.commands.docs import write_or_check

    page = Path("docs") / "x.md"
    (tmp_path / "docs").mkdir()
    (tmp_path / page).write_text("old\n")
    assert write_or_check(tmp_path, {page: "new\n"}, check=True) == [page]
    assert (tmp_path / page).read_text() == "old\n"
    assert write_or_check(tmp_path, {page: "new\n"}, check=False) == [page]
    assert (tmp_path / page).read_text() == "new\n" and write_or_check(tmp_path, {page: "new\n"}, check=True) == []


def test_every_troubleshooting_message_is_still_raised_by_the_code() -> None:
    """docs/troubleshooting.md quotes the code's messages: one that was reworded or removed fails here."""
    source = "\n".join(p.read_text() for p in (REPO / "src" / "sslops").rglob("*.py"))
    rows = re.findall(r"^\| `([^`]+)` \|", (REPO / "docs" / "troubleshooting.md").read_text(), re.M)
    assert len(rows) >= 20
    for quoted in rows:
        # "..." stands for what the message fills in; "in params.yaml" is the key's `{source}`
        parts = [p.strip() for p in quoted.replace("in params.yaml", "in {source}").split("...") if p.strip()]
        parts = [p.removeprefix("pretrain.images ") for p in parts]  # an example key, the message's `{key}`
        assert all(p in source for p in parts), f"troubleshooting.md quotes {quoted!r}, which the code no longer says"
