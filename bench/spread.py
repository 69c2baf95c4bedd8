#!/usr/bin/env python3
"""Summarizes several benchmark runs (their results.md files): for each mode
and concurrency, the lowest and highest requests per second, p50 and p99, and
p50 above raw's, over the runs.

    spread.py RUN1/results.md RUN2/results.md ..."""

import collections
import sys

COLUMNS = ["req/s", "p50 ms", "p99 ms", "p50 − raw", "gateway CPU s/1k"]


def first_table(path):
    """The rows of the first table in a results.md, as dicts by header."""
    header, rows = None, []
    for line in open(path, encoding="utf-8"):
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not set(cells[0]) <= set("-:"):
            rows.append(dict(zip(header, cells)))
    return rows


def number(cell):
    try:
        return float(cell.replace("+", ""))
    except ValueError:
        return None


def main():
    paths = sys.argv[1:]
    if not paths:
        sys.exit(__doc__)
    values = collections.OrderedDict()
    for path in paths:
        for row in first_table(path):
            key = (row["mode"], int(row["conc."]))
            for column in COLUMNS:
                v = number(row.get(column, "–"))
                if v is not None:
                    values.setdefault(key, {}).setdefault(column, []).append(v)
    print(f"Spread over {len(paths)} runs of the same code: lowest – highest.\n")
    print("| mode | conc. | " + " | ".join(COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for (mode, conc), by_column in values.items():
        cells = []
        for column in COLUMNS:
            vs = by_column.get(column)
            if not vs:
                cells.append("–")
            else:
                spec = {"req/s": ".0f", "p50 − raw": "+.2f"}.get(
                    column, ".3f" if "CPU" in column else ".2f")
                cells.append(f"{min(vs):{spec}} – {max(vs):{spec}}")
        print(f"| {mode} | {conc} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
