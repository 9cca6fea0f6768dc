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
