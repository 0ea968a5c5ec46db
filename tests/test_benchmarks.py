"""Smoke-runs the quick benchmark suite, one table at a time; no number is asserted."""

import json

import pytest

from benchmarks.__main__ import TABLES, main, parse_args
from pyro_adv.models import sbibm_available


@pytest.mark.parametrize("table", list(TABLES))
def test_quick_table_writes_json_and_report(table, tmp_path):
    if table == "sbi" and not sbibm_available():
        pytest.skip("Table 2 reads sbibm's files: pip install sbibm --no-deps")
    main(parse_args(["--suite", "quick", "--tables", table, "--outdir", str(tmp_path)]))
    entry = json.loads((tmp_path / f"{table}.json").read_text())
    assert entry["rows"], f"table {table} produced no rows"
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {table}
    report = (tmp_path / "report.md").read_text()
    assert TABLES[table][0] in report and entry["markdown"] in report


def test_overhead_compares_the_same_math():
    import torch

    from benchmarks import overhead

    module_call = torch.nn.Module.__call__
    rows, _ = overhead.run(quick=True)
    # the breakdown's instrumentation is gone after the run
    assert torch.nn.Module.__call__ is module_call
    engines = [r for r in rows if "same_math_max_rel_diff_losses" in r]
    assert [r["engine"] for r in engines] == ["AVB", "ALI", "GAN"]
    for row in engines:
        assert row["svi_ms_per_step"] > 0 and row["manual_ms_per_step"] > 0
        # the hand-written loop is the library's math: from the same parameters and
        # random state, the same losses and gradients up to float32 round-off
        assert row["same_math_max_rel_diff_losses"] < 1e-5, row
        assert row["same_math_max_rel_diff_gradients"] < 1e-4, row
        # the phases are attributed: Pyro's traces only in SVI, networks in both
        phases = row["breakdown_ms_per_step"]
        assert phases["svi_foreach"]["traces"] > 0 and phases["manual"]["traces"] == 0
        assert phases["svi_foreach"]["networks"] > 0 and phases["manual"]["networks"] > 0


def test_zoo_quick_rows_cover_every_model_and_method():
    from benchmarks import zoo
    from pyro_adv.models.zoo import ZOO

    rows, markdown = zoo.run(quick=True)
    expected = {(m, k) for m in ZOO for k in ["reference", *zoo.METHODS]}
    assert {(r["model"], r["method"]) for r in rows} == expected
    # only the methods can crash (and then the table says so); the reference rows and
    # Pyro's own guides always give numbers
    for r in rows:
        if r["method"] != "AutoImplicit + AVB":
            assert "error" not in r, r
            assert 0.0 <= r["c2st"] <= 1.0 and r["sd_ratio_min"] <= r["sd_ratio_max"]
    # one Markdown line per row, after the header and its separator
    assert markdown.count("\n| ") == len(rows)
