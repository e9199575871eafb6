"""``camcli report``: records found in folders (or named by a run) to ``index.html`` and
thumbnails.

Two passes, each over what it needs: every record is read once, summarised to a small card
(:func:`~camcli.report.summary.summarise`) and dropped, so memory follows the cards, not the
records; then the kept cards' thumbnails are drawn in a thread pool (Pillow decodes outside the
GIL) from the pictures :mod:`~camcli.report.pictures` found and verified, skipping thumbnails
already newer than their picture and record. The same input found twice (two
folders holding it, a folder given twice) is kept once: the first in the order the sources were
given, then by record path. A logged failure of an input that has a record is dropped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from PIL import Image

from camcli.report import pictures, runlog, summary, thumbnails
from camcli.report.folder import THUMBS, ReportFolder
from camcli.report.runpage import run_report_html
from camcli.report.sources import open_source

DEFAULT_DIR = Path("camcli-report")
#: Thumbnail paths relative to the page, by card id (the page builds the same from its data).
THUMB_NAMES = {"input": f"{THUMBS}/%s.jpg", "overlay": f"{THUMBS}/%s.cam.jpg"}
_THUMB_NAME = re.compile(r"^[0-9a-f]{16}(\.cam)?\.jpg$")


@dataclass
class ReportResult:
    """What :func:`build_report` wrote and what it could not read."""

    index: Path
    data: dict
    records_read: int
    problems: list[str] = field(default_factory=list)  # "path: reason", one per unreadable file


@dataclass
class _Found:
    order: tuple[int, str]  # (source index, record path): which copy of an input is kept
    record: Path
    card: dict
    input: dict  # the record's ``input`` (path, sha256, width, height): to find the picture


def build_report(
    sources: Iterable[str | os.PathLike] = (),
    out_dir: str | os.PathLike = DEFAULT_DIR,
    *,
    failures: Iterable[dict] = (),
    title: str | None = None,
    low_confidence: float = summary.LOW_CONFIDENCE,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReportResult:
    """Write ``out_dir/index.html`` and ``out_dir/thumbs/`` for the records under ``sources``.

    ``sources``: folders (searched recursively; their failure logs are read too) or record
    files. ``failures``: failed inputs known to the caller (a run), from
    :func:`camcli.report.runlog.failure`. Raises :class:`~camcli.errors.UsageError` for a source
    that does not exist or is not supported; unreadable records are listed in ``problems``.
    """
    out_dir = Path(out_dir)
    opened = [open_source(source) for source in sources]  # every argument checked first
    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    problems: list[str] = []
    found: dict[str, _Found] = {}
    logged: list[dict] = list(failures)
    read = 0
    with ReportFolder(out_dir) as folder, \
            ThreadPoolExecutor(workers, thread_name_prefix="camcli-report") as pool:
        jobs = ((i, source, path) for i, source in enumerate(opened) for path in source.records())
        for (i, _source, path), outcome in zip_lazily(pool, _read_card, jobs):
            read += 1
            if isinstance(outcome, str):
                problems.append(f"{path}: {outcome}")
                continue
            order = (i, str(path))
            card, described = outcome
            kept = found.get(card["name"])
            if kept is None or order < kept.order:
                found[card["name"]] = _Found(order, path, card, described)
            if progress is not None:
                progress(1)
        for source in opened:
            for log in reversed(list(source.failure_logs())):  # newest first: its reason wins
                try:
                    logged.extend(runlog.read_failures(source.read(log)))
                except OSError as exc:
                    problems.append(f"{log}: cannot read failure log: {exc.strerror or exc}")
        cards = list(pool.map(lambda f: _with_pictures(f, folder), found.values()))
        known = set(found)
        failed: dict[str, dict] = {}
        for entry in logged:
            if entry["name"] not in known:
                failed.setdefault(entry["name"], entry)
        created = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
        data = summary.page_data(cards, list(failed.values()), title or _title(opened), created,
                                 low_confidence)
        data["thumbs"] = THUMB_NAMES
        _remove_stale_thumbnails(folder, {card["id"] for card in cards})
        index = folder.write("index.html", run_report_html(data))
    return ReportResult(index=index, data=data, records_read=read,
                        problems=problems)


def zip_lazily(pool: ThreadPoolExecutor, fn, jobs, depth: int = 64):
    """``(job, fn(*job))`` in order, with at most ``depth`` calls in flight (jobs are streamed:
    a folder of 100,000 records is never listed whole before the first is read)."""
    from collections import deque

    window: deque = deque()
    for job in jobs:
        window.append((job, pool.submit(fn, *job)))
        if len(window) >= depth:
            job, future = window.popleft()
            yield job, future.result()
    while window:
        job, future = window.popleft()
        yield job, future.result()


def _read_card(_index: int, source, path: Path) -> tuple[dict, dict] | str:
    """The card of one record file and the record's ``input``, or why it cannot be read."""
    try:
        record = json.loads(source.read(path))
        card = summary.summarise(record)
        pictures.check_overlays(path, card["explained"])
    except OSError as exc:
        return f"cannot read record: {exc.strerror or exc}"
    except ValueError as exc:  # bad JSON, or RecordError
        return str(exc) if isinstance(exc, summary.RecordError) else f"not JSON: {exc}"
    return card, record["input"]


def _with_pictures(found: _Found, folder: ReportFolder) -> dict:
    """The card with its links (``dir``: the record's folder relative to the page; overlays
    keep their file names, or ``None`` when missing) and its thumbnails (drawn unless already up
    to date; ``thumb``/``cam`` say whether each exists, ``note`` why the input has none)."""
    card = dict(found.card)
    record = found.record
    card["dir"] = _href(record.parent, folder.path) + "/"
    overlays = [record.parent / e["overlay"] if e.get("overlay") else None
                for e in card["explained"]]
    card["explained"] = [
        {**entry, "overlay": quote(path.name) if path and pictures.is_overlay_file(path)
         else None}
        for entry, path in zip(card["explained"], overlays, strict=True)
    ]
    picture = pictures.find_input(record, found.input)
    card["input"] = None
    if isinstance(picture, pictures.Picture):
        card["input"] = (_href(picture.path.parent, folder.path) + "/", quote(picture.path.name))
    else:
        card["note"] = picture
    since = _mtime(record)
    card["thumb"] = _thumbnail(picture, folder, THUMB_NAMES["input"] % card["id"], since)
    if card["input"] and not card["thumb"]:
        card["note"] = "input not shown: no thumbnail could be drawn from it"
    card["cam"] = _overlay_thumbnail(overlays[0] if overlays else None, folder,
                                     THUMB_NAMES["overlay"] % card["id"], since)
    return card


def _overlay_thumbnail(path: Path | None, folder: ReportFolder, name: str, since: float) -> bool:
    """An overlay is one of the run's own files, replaced by a rename when rewritten: its
    thumbnail is up to date when newer than it (and the record), without reading it again."""
    changed = pictures.overlay_mtime(path) if path else None
    drawn = folder.mtime(name)
    if changed is not None and drawn is not None and drawn >= max(changed, since):
        return True
    return _thumbnail(pictures.read_overlay(path) if path else None, folder, name, since)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _thumbnail(source: pictures.Picture | str | None, folder: ReportFolder, name: str,
               since: float) -> bool:
    """Draw ``name`` from ``source`` unless it is newer than the picture and the record (a
    missing or unverified picture removes an old thumbnail); whether it exists."""
    if not isinstance(source, pictures.Picture):
        folder.remove(name)
        return False
    drawn = folder.mtime(name)
    if drawn is not None and drawn >= max(source.mtime, since):
        return True
    try:
        folder.write(name, thumbnails.thumbnail_of_bytes(source.data))
    except (OSError, ValueError, Image.DecompressionBombError):  # an unreadable picture
        folder.remove(name)
        return False
    return True


def _href(path: Path, out_dir: Path) -> str:
    """A link from the page to ``path``, relative, so the folders can move together."""
    relative = os.path.relpath(os.path.abspath(path), os.path.abspath(out_dir))
    return quote(Path(relative).as_posix())


def _remove_stale_thumbnails(folder: ReportFolder, ids: set[str]) -> None:
    for name in folder.thumbnails():
        if _THUMB_NAME.match(name) and name[:16] not in ids:
            folder.remove(f"{THUMBS}/{name}")


def _title(sources) -> str:
    if sources and all(source.path.is_file() for source in sources):
        return f"camcli report — one run, {len(sources):,} records"
    names = [source.path.name or str(source.path) for source in sources[:3]]
    more = f" and {len(sources) - 3} more" if len(sources) > 3 else ""
    return "camcli report — " + (", ".join(names) + more if names else "run")
