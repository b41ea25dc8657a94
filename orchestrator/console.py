"""Output for people and for scripts: tables and progress bars on a terminal, plain text when
piped, one JSON object per line with --json."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any, Callable, Iterable, Iterator, Sequence


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def json_line(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, ensure_ascii=False, default=_default) + "\n")


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def err(text: str) -> None:
    sys.stderr.write(text + "\n")


def interactive() -> bool:
    return sys.stderr.isatty()


@contextmanager
def progress(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress bar on a terminal (stderr); a no-op when piped or for --json."""
    if not (enabled and interactive()):
        yield lambda advance: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True, console=_stderr_console()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda advance: bar.advance(task, advance)


@contextmanager
def byte_progress(description: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """Like `progress`, for work measured in bytes of a file (imports)."""
    if not (enabled and interactive()):
        yield lambda done, total_: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True, console=_stderr_console()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total_: bar.update(task, completed=done, total=total_)


def _stderr_console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    """Aligned columns; rich styling only on a terminal."""
    rows = [["" if cell is None else str(cell) for cell in row] for row in rows]
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        grid = Table(title=Text(title) if title else None, show_lines=False)
        for header in headers:
            grid.add_column(Text(header), overflow="fold")
        for row in rows:
            grid.add_row(*(Text(cell) for cell in row))  # customer text is never rich markup
        Console().print(grid)
        return
    if title:
        out(title)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    out("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for row in rows:
        out("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
