"""Whether two run folders trained alike: their ``metrics.jsonl`` compared
record by record in every field that is not a timing or memory reading.

    python -m benchmarks.analysis.compare_runs RUN_A RUN_B [RUN_A2 RUN_B2 ...]

Used to show that a refactor left training unchanged (the same config and
seed before and after must give identical records). Prints one line per pair
and exits 1 if any pair differs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dag_pyg.train.logger import read_metrics

SKIP = ("time_", "mem_")


def compare(a: Path, b: Path) -> dict:
    """Records, fields compared and the differing ``(epoch, key, a, b)``."""
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    diffs, fields = [], 0
    if len(ra) != len(rb):
        diffs.append((None, "records", len(ra), len(rb)))
    for x, y in zip(ra, rb, strict=False):
        keys = sorted(k for k in set(x) | set(y) if not k.startswith(SKIP))
        fields += len(keys)
        diffs += [(x.get("epoch"), k, x.get(k), y.get(k)) for k in keys
                  if x.get(k) != y.get(k)]
    return {"records": min(len(ra), len(rb)), "fields": fields, "diffs": diffs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="pairs of run folders")
    args = p.parse_args(argv)
    if len(args.runs) % 2:
        p.error("give run folders in pairs: RUN_A RUN_B ...")
    bad = 0
    for a, b in zip(args.runs[::2], args.runs[1::2], strict=True):
        res = compare(a, b)
        verdict = "identical" if not res["diffs"] else f"{len(res['diffs'])} differ"
        print(f"{a} vs {b}: {res['records']} records, {res['fields']} non-timing "
              f"fields: {verdict}")
        for epoch, key, va, vb in res["diffs"][:10]:
            print(f"    epoch {epoch} {key}: {va!r} != {vb!r}")
        bad += bool(res["diffs"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
