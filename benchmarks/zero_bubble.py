"""Zero Bubble comparison (issue 3): predicted vs measured throughput of 1F1B, 1F1B-I, ZB-1p and
ZB-2p for the runs of Qi et al., ICLR 2024, Tables 3-5 (source `zerobubble2024`).

Prints one line per (model, micro-batches) group: measured and predicted samples/s per GPU for
the four schedules, the signed error of each, and whether the predicted order matches.
Run: python benchmarks/zero_bubble.py
"""

from __future__ import annotations

from collections import defaultdict

from meshplan.validate.report import validate
from meshplan.validate.rows import load_runs

ORDER = ("1F1B", "1F1B-I", "ZB-1p", "ZB-2p")


def schedule_of(row_id: str) -> str:
    for name in sorted(ORDER, key=len, reverse=True):
        if f"-{name}-" in row_id:
            return name
    raise AssertionError(row_id)


def main() -> None:
    rows = [r for r in load_runs() if r["source_id"] == "zerobubble2024"]
    result = validate(rows)
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in result["rows"]:
        model, m = r["id"].split("-")[1], r["id"].rsplit("-m", 1)[1]
        groups[f"{model} m={m}"][schedule_of(r["id"])] = r
    print(f"{'group':14} " + " ".join(f"{s:>22}" for s in ORDER) + "  order")
    matched = within = total = 0
    for g, by in sorted(groups.items(), key=lambda kv: (float(kv[0].split('B')[0]),
                                                          int(kv[0].split('=')[1]))):
        cells = [f"{by[s]['measured']:6.2f}/{by[s]['predicted']:6.2f} {by[s]['error']:+6.1%}"
                 for s in ORDER]
        meas = sorted(ORDER, key=lambda s: by[s]["measured"])
        pred = sorted(ORDER, key=lambda s: by[s]["predicted"])
        ok = meas == pred
        matched += ok
        within += sum(abs(by[s]["error"]) <= 0.10 for s in ORDER)
        total += len(ORDER)
        print(f"{g:14} " + " ".join(f"{c:>22}" for c in cells) + f"  {'yes' if ok else 'no'}")
    print("\ncells are measured/predicted samples/s per GPU and the signed error")
    print(f"order reproduced in {matched}/{len(groups)} groups; "
          f"{within}/{total} predictions within 10%")


if __name__ == "__main__":
    main()
