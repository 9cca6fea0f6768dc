"""The thin module through which sslops uses Great Expectations (1.x API).

It turns the `validate` params into two expectation suites, one over the annotated manifest (one row
per image) and one over the class-balance table (one row per class), runs them through a Checkpoint that
also builds Data Docs, and hands back plain results the stage can print, save and log. A suite runs on a pandas
DataFrame, or on a table of a SQLite file (`SqliteTable`: GX's SQL engine then validates with queries, and no row
is held in memory: a prepared store's manifest of any size).

Data Docs pages load their scripts, styles and fonts from public CDNs, so on a machine without internet they show
no results. `serve_assets` copies those files from the pinned npm packages of vendor/datadocs (`make setup`
installs them) into the site and points the pages at the copies.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sslops.config.schema import ValidateParams
from sslops.data.store import MANIFEST_COLUMNS

# The type names GX may report for each declared manifest dtype: pandas' and SQLite's (declared by pandas' to_sql,
# then by the affinity a CREATE TABLE AS gives each column).
TYPE_NAMES = {
    "string": ["string", "str", "object", "StringDtype", "TEXT"],
    "Int64": ["Int64", "Int64Dtype", "int64", "INTEGER", "INT"],
    "int64": ["int64", "INTEGER", "INT"],
    "float64": ["float64", "REAL", "FLOAT"],
}
SITE = "sslops"
ASSETS = Path("vendor") / "datadocs" / "node_modules"  # relative to the project root
# Every address the Data Docs pages of great-expectations 1.x load, and the file of vendor/datadocs that serves it
# (bootstrap-table's filter-control styles are named at 1.19.0 beside 1.19.1's scripts: the same files).
CDN_FILES = {
    "https://code.jquery.com/jquery-3.7.1.min.js": "jquery/dist/jquery.min.js",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css": "bootstrap/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js": "bootstrap/dist/js/bootstrap.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js": "popper.js/dist/umd/popper.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js": (
        "bootstrap-table/dist/bootstrap-table.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css": (
        "bootstrap-table/dist/bootstrap-table.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js": (
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css": (
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.min.css"
    ),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css": (
        "bootstrap-table/dist/extensions/filter-control/bootstrap-table-filter-control.css"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js": (
        "bootstrap-datepicker/dist/js/bootstrap-datepicker.min.js"
    ),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css": (
        "bootstrap-datepicker/dist/css/bootstrap-datepicker.min.css"
    ),
    "https://cdn.jsdelivr.net/npm/vega@5": "vega/build/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite/build/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed/build/vega-embed.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css": (
        "@fortawesome/fontawesome-free/css/all.min.css"
    ),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css": (
        "@forevolve/bootstrap-dark/dist/css/bootstrap-prefers-dark.css"
    ),
}
CDN_FOLDERS = ["@fortawesome/fontawesome-free/webfonts"]  # what a copied stylesheet loads by a relative path
# The logos (an image and a dark-mode background): the site's own copy of the logo stands in for both.
LOGO = re.compile(r"https://great-expectations-web-assets\.s3[^\"')]*")
REMOTE = re.compile(r'(?:src|href)="(https?://[^"]+\.(?:js|css)[^"]*|https://cdn\.jsdelivr\.net/npm/[^"]+)"')


@dataclass(frozen=True)
class SqliteTable:
    """A table of a SQLite file, for a suite to run on in place of a DataFrame."""

    path: Path
    name: str


@dataclass
class Check:
    """One evaluated expectation, reduced to what a person needs to act on it."""

    suite: str
    expectation: str
    column: str | None
    success: bool
    unexpected_count: int | None = None
    unexpected_percent: float | None = None
    observed: Any = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return f"{self.expectation}({self.column})" if self.column else self.expectation


def outcome(checks: list[Check]) -> dict[str, Any]:
    """The head of a validate stage's metrics: success, how many expectations ran and failed, and which."""
    failed = [c for c in checks if not c.success]
    return {
        "success": not failed,
        "evaluated": len(checks),
        "failed": len(failed),
        "failed_expectations": [c.title for c in failed],
    }


def failure_report(failed: list[Check]) -> str:
    """A compact, readable table of failed expectations with counts and example rows."""
    lines = [f"{len(failed)} expectation(s) failed:"]
    for check in failed:
        count = "" if check.unexpected_count is None else f" unexpected={check.unexpected_count}"
        share = "" if check.unexpected_percent is None else f" ({check.unexpected_percent:.3g}%)"
        observed = "" if check.observed is None else f" observed={check.observed}"
        limits = {k: v for k, v in check.kwargs.items() if k in ("min_value", "max_value", "mostly", "value_set")}
        lines.append(f"  - [{check.suite}] {check.title}{count}{share}{observed} expected {limits}")
        lines += [f"      e.g. {row}" for row in check.examples]
    return "\n".join(lines)


def manifest_expectations(cfg: ValidateParams, classes: list[str], rows: int, task: bool) -> list:
    """Expectations over the annotated manifest of `rows` images, thresholds from params.yaml's `validate` section;
    a downstream `task`'s test images must not be among the pretraining images either."""
    import great_expectations as gx

    E = gx.expectations
    exps = [E.ExpectTableColumnsToMatchSet(column_set=["row", *MANIFEST_COLUMNS], exact_match=False)]
    for column, dtype in MANIFEST_COLUMNS.items():
        exps.append(E.ExpectColumnValuesToBeInTypeList(column=column, type_list=TYPE_NAMES.get(dtype, [dtype])))
    for column in ("split", "source", "sha256", "height", "width", "channels", "mean", "std"):
        exps.append(E.ExpectColumnValuesToNotBeNull(column=column))
    exps += [
        E.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, max_value=cfg.max_rows),
        E.ExpectColumnValuesToBeInSet(column="split", value_set=["train", "test", "unlabeled"]),
        E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=list(cfg.splits)),
        E.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=max(len(classes) - 1, 0)),
        E.ExpectColumnUniqueValueCountToBeBetween(column="height", min_value=1, max_value=1),
        E.ExpectColumnUniqueValueCountToBeBetween(column="width", min_value=1, max_value=1),
        E.ExpectColumnUniqueValueCountToBeBetween(column="channels", min_value=1, max_value=1),
        E.ExpectColumnValuesToBeInSet(column="channels", value_set=[1, 3]),
        E.ExpectColumnValuesToBeBetween(column="std", min_value=cfg.blank_std, mostly=1.0 - cfg.max_blank_share),
        E.ExpectColumnValuesToBeInSet(
            column="duplicate_in_split", value_set=[False], mostly=1.0 - cfg.max_duplicate_share
        ),
    ]
    if classes:
        exps.append(E.ExpectColumnValuesToBeInSet(column="class_name", value_set=list(classes)))
    # A test image that is also in train inflates every test metric downstream: at most `max_leaked_test` of them.
    # GX tolerates a share (`mostly`), so the count becomes a share of the rows, half an image of slack for rounding.
    tolerance = {"mostly": max(0.0, 1.0 - (cfg.max_leaked_test + 0.5) / max(rows, 1))} if cfg.max_leaked_test else {}
    for column in ("test_in_train", "test_in_pretraining") if task else ("test_in_train",):
        exps.append(E.ExpectColumnValuesToBeInSet(column=column, value_set=[False], **tolerance))
    return exps


def balance_expectations(cfg: ValidateParams, classes: list[str]) -> list:
    """Expectations over the class-balance table: every declared class present with a minimum share."""
    import great_expectations as gx

    E = gx.expectations
    return [
        E.ExpectColumnValuesToBeBetween(column="count", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="share", min_value=cfg.min_class_share),
        E.ExpectTableRowCountToBeBetween(min_value=max(len(classes), 1)),
    ]


def run_suites(
    frames: dict[str, tuple[pd.DataFrame | SqliteTable, list]], docs_dir: Path, examples: int = 5
) -> list[Check]:
    """Validate each named frame against its expectations; build Data Docs into `docs_dir`.

    `frames` maps a suite name to (dataframe or SQLite table, expectations). Failed row-level expectations carry up
    to `examples` offending rows (from the frame's `row` column when it has one).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.add_data_docs_site(
        site_name=SITE,
        site_config={
            "class_name": "SiteBuilder",
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
        },
    )
    source = context.data_sources.add_pandas("sslops")
    result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": examples}
    checks: list[Check] = []
    for name, (frame, expectations) in frames.items():
        if isinstance(frame, SqliteTable):
            sql = context.data_sources.add_sqlite(f"sslops-{name}", connection_string=f"sqlite:///{frame.path}")
            batch = sql.add_table_asset(name, table_name=frame.name).add_batch_definition_whole_table(name)
        else:
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
        # One checkpoint per frame: batch parameters (the dataframe) apply to a whole checkpoint run.
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"validate-{name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="data-docs", site_names=[SITE])],
                result_format=result_format,
            )
        )
        run = checkpoint.run(batch_parameters=None if isinstance(frame, SqliteTable) else {"dataframe": frame})
        for validation in run.run_results.values():
            checks += [_to_check(name, r, frame, examples) for r in validation.results]
    return checks


def serve_assets(docs_dir: Path, assets: Path) -> list[str]:
    """Copy the CDN files the Data Docs pages in `docs_dir` load from the npm packages in `assets` into the site
    (static/vendor/<package path>) and point every page at its copies, so the pages render without internet. Returns
    the addresses still loaded from outside (none with great-expectations 1.x and vendor/datadocs installed)."""
    vendor = docs_dir / "static" / "vendor"
    if not assets.is_dir():
        return sorted(CDN_FILES)
    for rel in CDN_FILES.values():
        (vendor / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(assets / rel, vendor / rel)
    for rel in CDN_FOLDERS:
        shutil.copytree(assets / rel, vendor / rel, dirs_exist_ok=True)
    remote: set[str] = set()
    for page in docs_dir.rglob("*.html"):
        up = "../" * (len(page.relative_to(docs_dir).parts) - 1)  # from the page's folder to the site's root
        text = page.read_text(encoding="utf-8")
        for url, rel in CDN_FILES.items():
            text = text.replace(f'"{url}"', f'"{up}static/vendor/{rel}"')
        text = LOGO.sub(f"{up}static/images/logo-long.png", text)
        page.write_text(text, encoding="utf-8")
        remote.update(REMOTE.findall(text))
    return sorted(remote)


def _to_check(suite: str, result: Any, frame: pd.DataFrame | SqliteTable, examples: int) -> Check:
    config = result.expectation_config
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "value_set") or len(str(v)) < 200}
    details = result.result or {}
    check = Check(
        suite=suite,
        expectation=config.type,
        column=config.kwargs.get("column"),
        success=bool(result.success),
        unexpected_count=details.get("unexpected_count"),
        unexpected_percent=details.get("unexpected_percent"),
        observed=details.get("observed_value"),
        kwargs=kwargs,
    )
    if not check.success:
        check.examples = _examples(config.kwargs.get("column"), details, frame, examples)
    return check


def _examples(
    column: str | None, details: dict[str, Any], frame: pd.DataFrame | SqliteTable, limit: int
) -> list[dict[str, Any]]:
    """A few offending rows: GX reports the unexpected values; pick the rows that hold them."""
    values = details.get("partial_unexpected_list") or []
    if isinstance(frame, SqliteTable):
        return _table_examples(column, values, frame, limit)
    if column is None or column not in frame or not values:
        return []
    rows = frame[frame[column].isin(values)].head(limit)
    keep = [c for c in ("row", "split", "source", "index", "class_name", column) if c in rows]
    return rows[list(dict.fromkeys(keep))].to_dict("records")


def _table_examples(column: str | None, values: list, table: SqliteTable, limit: int) -> list[dict[str, Any]]:
    """`_examples` from a SQLite table: its first `limit` rows holding one of `values`, by a query."""
    con = sqlite3.connect(table.path)
    try:
        present = [row[1] for row in con.execute(f"PRAGMA table_info({_quoted(table.name)})")]
        if column is None or column not in present or not values:
            return []
        keep = list(dict.fromkeys(c for c in ("row", "split", "source", "index", "class_name", column) if c in present))
        query = (
            f"SELECT {', '.join(map(_quoted, keep))} FROM {_quoted(table.name)} WHERE {_quoted(column)} "
            f"IN ({', '.join('?' * len(values))}) ORDER BY rowid LIMIT {int(limit)}"
        )
        return [dict(zip(keep, row, strict=True)) for row in con.execute(query, values)]
    finally:
        con.close()


def _quoted(name: str) -> str:
    """An SQL identifier (the manifest has a column named `index`, a keyword)."""
    return '"' + name.replace('"', '""') + '"'


def dense_expectations(cfg: ValidateParams, kind: str, classes: list[str], rows: int) -> dict[str, list]:
    """The suites of a detection or segmentation task: its images (one size, no blanks, no test image in train or in
    pretraining, duplicates within a split) and its labels: boxes inside their image and not degenerate, every
    class id declared (detection); masks the size of their image, ids in range (segmentation)."""
    import great_expectations as gx

    E = gx.expectations
    tolerance = {"mostly": max(0.0, 1.0 - (cfg.max_leaked_test + 0.5) / max(rows, 1))} if cfg.max_leaked_test else {}
    suites: dict[str, list] = {
        "images": [
            E.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, max_value=cfg.max_rows),
            E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=["train", "test"]),
            E.ExpectColumnUniqueValueCountToBeBetween(column="height", min_value=1, max_value=1),
            E.ExpectColumnUniqueValueCountToBeBetween(column="width", min_value=1, max_value=1),
            E.ExpectColumnValuesToBeBetween(column="std", min_value=cfg.blank_std, mostly=1.0 - cfg.max_blank_share),
            E.ExpectColumnValuesToBeInSet(
                column="duplicate_in_split", value_set=[False], mostly=1.0 - cfg.max_duplicate_share
            ),
            E.ExpectColumnValuesToBeBetween(column="objects", min_value=1, mostly=0.5),  # mostly scenes, not empty
            *[
                E.ExpectColumnValuesToBeInSet(column=column, value_set=[False], **tolerance)
                for column in ("test_in_train", "test_in_pretraining")
            ],
        ],
        "class_balance": balance_expectations(cfg, classes),
    }
    if kind == "detection":
        suites["boxes"] = [
            E.ExpectTableRowCountToBeBetween(min_value=1),
            *[E.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in ("x1", "y1", "right", "bottom")],
            *[
                E.ExpectColumnValuesToBeBetween(column=c, min_value=0, strict_min=True)
                for c in ("box_width", "box_height")
            ],
            E.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=len(classes) - 1),
        ]
    else:
        suites["masks"] = [
            E.ExpectColumnValuesToBeInSet(column="size_matches", value_set=[True]),
            E.ExpectColumnValuesToBeBetween(column="ids_out_of_range", min_value=0, max_value=0),
        ]
    return suites
