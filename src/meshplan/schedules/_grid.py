"""Step x rank text table of a (partial) dry run, for error messages."""

from __future__ import annotations

from bisect import bisect_left, bisect_right

from meshplan.schedules.ir import Action


def format_grid(
    actions: list[list[Action]],
    starts: list[list[int]],
    mark: int | None,
    heads: dict[int, Action],
    clocks: list[int],
    before: int = 10,
    after: int = 3,
) -> str:
    """Rows are steps, columns ranks; a cell lists what the rank started at that step.

    `[2F0]` is an action that could not run (shown at the step its rank reached), and the
    row `mark` ends with `<-- ERROR`. Only rows `before` steps above to `after` below the
    mark are shown, so the table stays readable for long schedules.
    """
    end = max([0, *(clocks[r] for r in heads), *(s[-1] for s in starts if s)])
    if mark is None:
        lo, hi = 0, min(end, before + after)
    else:
        lo, hi = max(0, mark - before), min(max(end, mark), mark + after)
    cells: list[list[list[str]]] = [[[] for _ in actions] for _ in range(lo, hi + 1)]
    for rank, (acts, steps) in enumerate(zip(actions, starts, strict=True)):
        for k in range(bisect_left(steps, lo), bisect_right(steps, hi)):
            cells[steps[k] - lo][rank].append(str(acts[k]))
    for rank, head in heads.items():
        if lo <= clocks[rank] <= hi:
            cells[clocks[rank] - lo][rank].append(f"[{head}]")
    table = [["step", *(f"rank {r}" for r in range(len(actions)))]]
    table += [[str(lo + i), *(" ".join(c) for c in row)] for i, row in enumerate(cells)]
    widths = [max(len(row[c]) for row in table) for c in range(len(table[0]))]
    lines = []
    for i, row in enumerate(table):
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        if mark is not None and i > 0 and lo + i - 1 == mark:
            line += "  <-- ERROR"
        lines.append(line)
    return "\n".join(lines)
