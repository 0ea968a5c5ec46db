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


def test_sbi_table_shows_every_budget_beside_its_anchors():
    from benchmarks import sbi

    def cell(task, budget, method, value, metric="sbibm", observations=10):
        return {
            "task": task,
            "simulations": budget,
            "method": method,
            "c2st_mean": value,
            "metric": metric,
            "num_observations": observations,
            "published": {},  # stale in old cells: the table must not read anchors from here
        }

    rows = [
        cell("two_moons", 1_000, "ali", 0.70),  # below NPE's 0.725
        cell("two_moons", 100_000, "ali", 0.60),  # above NPE's 0.542
        cell("two_moons", 10_000, "avb", 0.87, metric="fast", observations=3),
        cell("slcp", 10_000, "ali", 0.95),  # above NPE's 0.901
    ]
    lines = sbi._markdown(rows, None).splitlines()
    body = lines[2 : lines.index("")]
    table = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in body}
    # every task with a cell gets sbibm's three budgets, in order, and no other task a row
    assert list(table) == [
        ("two_moons", "1,000"),
        ("two_moons", "10,000"),
        ("two_moons", "100,000"),
        ("slcp", "1,000"),
        ("slcp", "10,000"),
        ("slcp", "100,000"),
    ]
    assert lines[0].split("|")[3:-1] == [" ALI ", " AVB (likelihood) "] + [
        f" {a} " for a in sbi.ANCHORS
    ]
    # each row carries that budget's published anchors (issue 11's table)
    assert (
        "| two_moons | 1,000 | 0.700 | not run | 0.725 | 0.643 | 0.773 | 0.822 | 0.911 | 0.854 |"
        in lines
    )
    assert (
        "| two_moons | 10,000 | not run | 0.870* (3 obs.) | 0.606 |"
        in table[("two_moons", "10,000")]
    )
    assert (
        "| two_moons | 100,000 | 0.600 | not run | 0.542 | 0.530 | 0.668 | 0.629 | 0.856 | 0.788 |"
        in lines
    )
    assert (
        "| slcp | 1,000 | not run | not run | 0.975 | 0.965 | 0.946 | 0.972 | 0.963 |  |" in lines
    )
    assert "| slcp | 10,000 | 0.950 | not run | 0.901 |" in table[("slcp", "10,000")]
    # the NPE summary counts each method's own cells
    summary = next(line for line in lines if line.startswith("At or below NPE"))
    assert "ALI (simulation bank) 1 of 3 cells;" in summary
    assert "AVB (likelihood) 0 of 1 cells (1 of them `*` or partial)" in summary
