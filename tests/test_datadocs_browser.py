"""Great Expectations' Data Docs in a real browser with the network cut: the results table renders from the files
the validate stage serves from the project, and does not without them (so the test can tell the two apart).

Debian's Chromium through playwright, as the team stack's UI tests (marker `stack`: make test-stack).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO
from sslops.adapters.expectations import ASSETS
from sslops.cli import main

pytestmark = [pytest.mark.stack, pytest.mark.integration]
CHROMIUM = "/usr/bin/chromium"


def rendered_rows(index: Path, screenshot: Path) -> int:
    """Rows of the validation results table on the Data Docs index, opened from disk with every request to the
    network refused."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
        page.goto(index.as_uri())
        page.wait_for_load_state("load")
        page.wait_for_timeout(1500)  # bootstrap-table builds its rows after the scripts run
        rows = page.locator("table.table tbody tr:has(a)").count()
        page.screenshot(path=screenshot, full_page=True)
        browser.close()
    return rows


def test_the_data_docs_show_their_results_offline(project, tmp_path: Path) -> None:
    assert main(["prepare"]) == 0 and main(["validate"]) == 0  # without the project's copies: CDN addresses
    docs = project.outputs().validation / "data_docs"
    unserved = tmp_path / "unserved"
    shutil.copytree(docs, unserved)
    (project.root / ASSETS).parent.mkdir(parents=True)
    (project.root / ASSETS).symlink_to(REPO / ASSETS)
    assert main(["validate"]) == 0
    assert rendered_rows(docs / "index.html", tmp_path / "served.png") >= 2  # the manifest's and the balance's runs
    assert rendered_rows(unserved / "index.html", tmp_path / "unserved.png") == 0
