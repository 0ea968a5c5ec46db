"""Smoke-runs the quick benchmark suite; the numbers themselves are never asserted."""

import json

from benchmarks.__main__ import main, parse_args


def test_quick_suite_writes_json_and_report(tmp_path):
    main(parse_args(["--suite", "quick", "--outdir", str(tmp_path)]))
    results = json.loads((tmp_path / "results.json").read_text())
    (row,) = results["overhead"]
    assert row["svi_ms_per_step"] > 0 and row["manual_ms_per_step"] > 0
    assert "Table 4" in (tmp_path / "report.md").read_text()
