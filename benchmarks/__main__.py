"""
Runs the benchmark tables and writes ``results.json`` and ``report.md``.

    python -m benchmarks --suite quick      # tiny budgets, for the smoke test
    python -m benchmarks --suite full       # the numbers the README reports
    python -m benchmarks --suite full --tables gan,overhead

Each table is one run. Its rows, its Markdown and the run's machine, date and command
are kept in ``<outdir>/<table>.json``, so tables can be rerun one at a time; the
report and ``results.json`` are rebuilt from every table file in ``outdir``. A table
module exposes ``run(quick, seed, outdir) -> (rows, markdown)`` and saves its figures
into ``outdir`` (the Markdown links them by file name).
"""

import argparse
import datetime
import importlib
import inspect
import json
import os
import platform
import time

import torch

# name -> (title, module); modules are imported on demand so one table's imports
# never slow down another's run
TABLES = {
    "exponential": ("Table 1: the exponential-latent posterior (thesis 4.2.1)", "exponential"),
    "sbi": ("Table 2: simulation-based benchmark tasks (sbibm)", "sbi"),
    "gan": ("Table 3: GAN fits, every divergence", "gan"),
    "overhead": ("Table 4: overhead of SVI + TraceAVB_ELBO", "overhead"),
    "robustness": (
        "Table 5: robustness on tasks nobody tuned for (library defaults)",
        "robustness",
    ),
    "zoo": ("Table 6: the model zoo, every method against reference posteriors", "zoo"),
    "importance": (
        "Table 7: importance diagnostics from AVB's and ALI's discriminators",
        "importance",
    ),
    "distributed": ("Table 8: data-parallel scaling, 1 and 2 ranks", "distributed"),
    "modes": ("Table 9: separated modes (GAN mode coverage, a bimodal posterior)", "modes"),
}


def _machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__}"


def _load_table_files(outdir):
    found = {}
    for name in TABLES:
        path = os.path.join(outdir, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:
                found[name] = json.load(f)
    return found


def _load(entry):
    load = entry.get("load_average")
    return "n/a" if load is None else f"{load[0]:.1f} before, {load[1]:.1f} after"


def _seconds(entry):
    # a table assembled from separately run pieces has no single wall time
    seconds = entry.get("seconds")
    return "wall time n/a (run in pieces)" if seconds is None else f"{seconds:.0f} s"


def write_report(outdir):
    """Rebuilds ``results.json`` and ``report.md`` from the table files in ``outdir``."""
    found = _load_table_files(outdir)
    lines = ["# pyro-adv benchmarks", ""]
    lines += [
        "Each table below is one run of `python -m benchmarks`; its machine, date and "
        "command are stated with it. Rerun a table with the command shown.",
        "",
    ]
    for entry in found.values():
        lines += [f"## {entry['title']}", ""]
        lines += [
            f"*{entry['date']}; {entry['machine']}; suite `{entry['suite']}`, "
            f"seed {entry['seed']}; {_seconds(entry)}; "
            f"load average {_load(entry)}; "
            f"`{entry['command']}`*",
            "",
            entry["markdown"],
            "",
        ]
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(found, f, indent=2)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write("\n".join(lines))
    return found


def main(args):
    os.makedirs(args.outdir, exist_ok=True)
    quick = args.suite == "quick"
    names = list(TABLES) if args.tables == "all" else args.tables.split(",")
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise SystemExit(f"unknown tables {unknown}; choose from {sorted(TABLES)}")
    command = f"python -m benchmarks --suite {args.suite} --tables {name_list(names)}"
    if args.seed:
        command += f" --seed {args.seed}"
    if args.device != "cpu":
        command += f" --device {args.device}"
    for name in names:
        title, module_name = TABLES[name]
        module = importlib.import_module(f"benchmarks.{module_name}")
        load_before = os.getloadavg()[0]
        start = time.perf_counter()
        options = {}
        if "device" in inspect.signature(module.run).parameters:
            options["device"] = args.device
        elif args.device != "cpu":
            print(f"{name}: runs on the CPU only (no device option)", flush=True)
        rows, markdown = module.run(quick=quick, seed=args.seed, outdir=args.outdir, **options)
        entry = {
            "title": title,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": _machine(),
            "suite": args.suite,
            "seed": args.seed,
            "seconds": time.perf_counter() - start,
            # other work on the machine inflates the timings: the 1-minute load average
            # before and after the run says how much was going on
            "load_average": [load_before, os.getloadavg()[0]],
            "command": command,
            "rows": rows,
            "markdown": markdown,
        }
        with open(os.path.join(args.outdir, f"{name}.json"), "w") as f:
            json.dump(entry, f, indent=2)
        print(f"{title}\n{markdown}", flush=True)
    return write_report(args.outdir)


def name_list(names):
    return "all" if list(names) == list(TABLES) else ",".join(names)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="pyro-adv benchmarks")
    parser.add_argument("--suite", choices=["quick", "full"], default="full")
    parser.add_argument("--tables", default="all", help="comma-separated: " + ", ".join(TABLES))
    parser.add_argument("--outdir", default=os.path.join("benchmarks", "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--device", default="cpu", help="torch device of the tables that take one (cpu, cuda)"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
