"""
Reruns one cell of Table 6 (the model zoo) with the table's own fitting and metrics,
and rewrites ``benchmarks/results/zoo.json`` with it:

    python -m benchmarks.rerun_zoo_cell logistic_regression "AutoImplicit + AVB"

Then ``benchmarks.__main__.write_report("benchmarks/results")`` rebuilds the report.
"""

import argparse
import datetime
import json
import warnings

import torch

from benchmarks import zoo
from pyro_adv.models.zoo import get_model


def main(args):
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    entry = json.load(open(args.path))
    budget = zoo.BUDGETS["full"]
    n, seed = budget["c2st_samples"], args.seed
    m = get_model(args.model)
    reference = m.flat(m.reference(budget["draws"], seed=seed))
    row = {"model": args.model, "method": args.method, "steps": budget["steps"][args.model]}
    draws, info = zoo._svi_row(m, args.method, row["steps"], budget["draws"], seed)
    row.update(info)
    row.update(zoo._metrics(draws, reference, reference[:n], n, budget["c2st_kwargs"], seed))
    print(zoo._fmt(row), flush=True)
    key = (args.model, args.method)
    rows = [row if (r["model"], r["method"]) == key else r for r in entry["rows"]]
    references = {k: get_model(k).reference_kind for k in zoo.ZOO}
    entry["rows"] = rows
    entry["markdown"] = zoo._markdown(rows, budget, references)
    entry.setdefault("reruns", []).append(
        {"cell": list(key), "date": datetime.date.today().isoformat(), "command": args.command}
    )
    with open(args.path, "w") as f:
        json.dump(entry, f, indent=2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("model")
    parser.add_argument("method")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--path", default="benchmarks/results/zoo.json")
    args = parser.parse_args(argv)
    args.command = f"python -m benchmarks.rerun_zoo_cell {args.model} {args.method!r}"
    return args


if __name__ == "__main__":
    main(parse_args())
