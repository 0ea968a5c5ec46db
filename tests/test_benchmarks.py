"""Smoke-runs the quick benchmark suite, one table at a time; no number is asserted."""

import json

import pytest

from benchmarks.__main__ import TABLES, main, parse_args


@pytest.mark.parametrize("table", list(TABLES))
def test_quick_table_writes_json_and_report(table, tmp_path):
    main(parse_args(["--suite", "quick", "--tables", table, "--outdir", str(tmp_path)]))
    entry = json.loads((tmp_path / f"{table}.json").read_text())
    assert entry["rows"], f"table {table} produced no rows"
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {table}
    report = (tmp_path / "report.md").read_text()
    assert TABLES[table][0] in report and entry["markdown"] in report


def test_overhead_rows_are_timings(tmp_path):
    main(parse_args(["--suite", "quick", "--tables", "overhead", "--outdir", str(tmp_path)]))
    (row,) = json.loads((tmp_path / "overhead.json").read_text())["rows"]
    assert row["svi_ms_per_step"] > 0 and row["manual_ms_per_step"] > 0
