"""The files an experiment of :mod:`balanced_vae.paper.reproduce` writes: a table as CSV, Markdown and
JSON, a figure's JSON record beside its PNGs; each JSON holds the rows, the protocol and the compute."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic, write_text_atomic
from .context import Context

__all__ = ["figure_record", "format_number", "write_table"]


def format_number(v: Any) -> str:
    """A table cell: 4 significant digits below 10^4, whole numbers above, blank for None."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else (f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}")
    return "" if v is None else str(v)


def write_table(
    ctx: Context, name: str, columns: list[str], rows: list[dict], *, title: str, protocol: dict, seconds: float
) -> Path:
    """Write ``name`` as CSV, Markdown and JSON (rows + protocol) into the context folder."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(ctx.folder / f"{name}.csv", buf.getvalue())
    md = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    md += [f"| {' | '.join(format_number(r.get(c)) for c in columns)} |" for r in rows]
    write_text_atomic(ctx.folder / f"{name}.md", f"### {title}\n\n" + "\n".join(md) + "\n")
    write_json_atomic(
        ctx.folder / f"{name}.json",
        {
            "name": name,
            "title": title,
            "columns": columns,
            "rows": rows,
            "protocol": protocol,
            "seconds": round(seconds, 1),
            "compute": ctx.compute(),
        },
    )
    return ctx.folder / f"{name}.json"


def figure_record(
    ctx: Context,
    name: str,
    title: str,
    files: list[str],
    protocol: dict,
    seconds: float,
    rows: list[dict] | None = None,
    columns: list[str] | None = None,
) -> Path:
    """Write a figure's record ``name.json`` (its files, rows and protocol) into the context folder."""
    path = ctx.folder / f"{name}.json"
    write_json_atomic(
        path,
        {
            "name": name,
            "title": title,
            "figures": files,
            "rows": rows or [],
            "columns": columns or [],
            "protocol": protocol,
            "seconds": round(seconds, 1),
            "compute": ctx.compute(),
        },
    )
    return path
