"""
Runs the benchmark tables and writes ``results.json`` and ``report.md``.

    python -m benchmarks --suite quick      # tiny budgets, for the smoke test
    python -m benchmarks --suite full       # the numbers the README reports
"""

import argparse
import datetime
import json
import os
import platform

import torch

from benchmarks import overhead

TABLES = {"overhead": ("Table 4: overhead of SVI + TraceAVB_ELBO", overhead.run)}


def main(args):
    os.makedirs(args.outdir, exist_ok=True)
    quick = args.suite == "quick"
    names = list(TABLES) if args.tables == "all" else args.tables.split(",")
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise SystemExit(f"unknown tables {unknown}; choose from {sorted(TABLES)}")
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = f"python -m benchmarks --suite {args.suite} --tables {args.tables}"
    results = {"machine": machine, "date": stamp, "command": command, "torch": torch.__version__}
    lines = [f"# pyro-adv benchmarks ({args.suite})", "", f"{stamp}; {machine}; `{command}`", ""]
    for name in names:
        title, fn = TABLES[name]
        rows, table = fn(quick=quick, seed=args.seed)
        results[name] = rows
        lines += [f"## {title}", "", table]
        print(f"{title}\n{table}")
    with open(os.path.join(args.outdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.outdir, "report.md"), "w") as f:
        f.write("\n".join(lines))
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="pyro-adv benchmarks")
    parser.add_argument("--suite", choices=["quick", "full"], default="full")
    parser.add_argument("--tables", default="all", help="comma-separated: " + ", ".join(TABLES))
    parser.add_argument("--outdir", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
