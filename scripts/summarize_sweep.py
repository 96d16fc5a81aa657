"""Turn a train.py -m folder into a verdict: summary.csv, summary.md and summary.png inside it,
and a table in the terminal.

    python scripts/summarize_sweep.py logs/train/multiruns/<time>
    python scripts/summarize_sweep.py <folder> --unfinished     # a sweep still running, as far as it got

Probe the jobs first (python probe.py sweep=<same folder> ...) to fill the probe columns; random
weight baselines come from python probe.py sweep=<folder> probe.random_init=true. From Python:
stjepa.sweep_summary.summarize_sweep(folder).rows."""
import argparse
import sys

import rich

from stjepa.errors import UserError
from stjepa.sweep_summary import (markdown, ranking_agreement, rich_table, significant_differences, summarize_sweep,
                                  write_summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", help="the folder train.py -m wrote (logs/<task>/multiruns/<time>)")
    parser.add_argument("--unfinished", action="store_true",
                        help="summarise jobs that have not finished (a sweep still running, or stopped early) up to "
                             "their last logged step, in the groups, instead of leaving them out")
    args = parser.parse_args(argv)
    try:
        summary = summarize_sweep(args.sweep, include_unfinished=args.unfinished)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = write_summary(summary)
    rich.print(rich_table(summary))
    for line in significant_differences(summary) + ranking_agreement(summary) + summary.notes:
        rich.print(f"- {line}")
    rich.print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
