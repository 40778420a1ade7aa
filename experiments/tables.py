"""Rows of results as markdown and CSV tables, written atomically."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

Row = Dict[str, Any]


def columns(rows: Sequence[Row]) -> List[str]:
    """Every key of ``rows`` in first-seen order."""
    seen: Dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def cell(value: Any) -> str:
    """Floats in 4 significant digits (scientific when small or large), the rest as ``str``."""
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and not 1e-2 <= abs(value) < 1e5 else f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(rows: Sequence[Row], cols: Sequence[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> Path:
    """``text`` into ``path`` (its folder created): a temporary file beside it, then a rename, so that a
    reader never sees half a file and an interrupted job leaves the last complete one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
    return path


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    """All columns of ``rows``; a row without a column leaves its cell empty (:func:`write_text`)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=columns(rows))
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, text.getvalue())
