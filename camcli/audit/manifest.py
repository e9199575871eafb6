"""Reading an audit manifest: one row per image, in CSV or JSON Lines.

Columns (CSV header names or JSONL keys):

- ``path``: the image, relative to the manifest's folder (absolute paths are kept). Required.
- ``id``: the image's name in reports and for matching a ``--baseline``; default: ``path``.
- ``expected``: class index, WordNet id or label name. Optional.
- ``bbox``: ``x0,y0,x1,y1`` in the image's own pixels (x1/y1 exclusive). Several boxes: repeat
  the column (CSV), separate them with ``;``, or give a JSON list.
- ``mask``: a binary mask image (non-zero = object), relative to the manifest, stretched over
  the image as the image is stretched to the model's input. Not together with ``bbox``.
- ``note``: free text, shown in the report.
- any threshold name of :data:`camcli.audit.checks.THRESHOLDS` (``min_energy_in_box``...): a
  number overriding the command line for this row, or ``off``.

Every problem is a :class:`ManifestError` naming the line, raised before any model is loaded,
so a CI job with a broken manifest fails in a second with a message that says where to look.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from camcli.audit.checks import BY_NAME, OFF
from camcli.errors import UsageError

COLUMNS = ("path", "id", "expected", "bbox", "mask", "note", *BY_NAME)


class ManifestError(UsageError):
    """The manifest cannot be used; the message names the file and line."""

    def __init__(self, source: str | Path, line: int | None, reason: str):
        where = f"{source}:{line}" if line is not None else str(source)
        super().__init__(f"manifest {where}: {reason}")


@dataclass(frozen=True)
class ManifestRow:
    """One image to audit, as the manifest describes it (classes still unresolved)."""

    line: int
    id: str
    path: Path  # resolved against the manifest's folder
    spec_path: str  # as written in the manifest
    expected: str | int | None = None
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    mask: Path | None = None
    note: str | None = None
    thresholds: dict[str, float | str] = field(default_factory=dict)

    @property
    def has_region(self) -> bool:
        return bool(self.boxes) or self.mask is not None


@dataclass(frozen=True)
class Manifest:
    path: Path
    format: str  # "csv" or "jsonl"
    sha256: str
    rows: tuple[ManifestRow, ...]


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest file (format from the extension, else from the content)."""
    from camcli.outputs import sha256

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(path, None, "no such file") from None
    except OSError as exc:
        raise ManifestError(path, None, f"cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(path, None, f"not UTF-8 text ({exc.reason})") from None
    fmt = _format(path, text)
    rows = parse_jsonl(text, path) if fmt == "jsonl" else parse_csv(text, path)
    return Manifest(path=path, format=fmt, sha256=sha256(data), rows=tuple(rows))


def _format(path: Path, text: str) -> str:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    return "jsonl" if text.lstrip().startswith("{") else "csv"


# --------------------------------------------------------------------------- the two syntaxes


def parse_csv(text: str, source: str | Path = "<manifest>") -> list[ManifestRow]:
    """Rows of a CSV manifest with a header line; ``bbox`` may be repeated in the header."""
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    rows, seen = [], {}
    line = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise ManifestError(source, reader.line_num, f"bad CSV: {exc}") from None
        start, line = line, reader.line_num + 1
        if not any(cell.strip() for cell in cells) or cells[0].lstrip().startswith("#"):
            continue
        if header is None:
            header = [cell.strip().lower() for cell in cells]
            _check_columns(header, source, start)
            continue
        if len(cells) > len(header):
            raise ManifestError(source, start,
                                f"{len(cells)} fields but the header has {len(header)}")
        fields: dict[str, object] = {}
        boxes: list[str] = []
        for name, cell in zip(header, cells, strict=False):
            cell = cell.strip()
            if not cell:
                continue
            if name == "bbox":
                boxes.append(cell)
            else:
                fields[name] = cell
        if boxes:
            fields["bbox"] = ";".join(boxes)
        rows.append(_row(fields, source, start, seen))
    if header is None:
        raise ManifestError(source, None, "empty: expected a header line naming the columns")
    if not rows:
        raise ManifestError(source, None, "no rows after the header")
    return rows


def parse_jsonl(text: str, source: str | Path = "<manifest>") -> list[ManifestRow]:
    """Rows of a JSON Lines manifest: one JSON object per non-blank line."""
    rows, seen = [], {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ManifestError(source, number, f"invalid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise ManifestError(source, number, "each line must be a JSON object")
        keys = [str(k).lower() for k in record]
        _check_columns(keys, source, number)
        fields = {str(k).lower(): v for k, v in record.items() if v is not None and v != ""}
        rows.append(_row(fields, source, number, seen))
    if not rows:
        raise ManifestError(source, None, "no rows")
    return rows


def _check_columns(names: list[str], source, line: int) -> None:
    for name in names:
        if name not in COLUMNS:
            close = difflib.get_close_matches(name, COLUMNS, n=2)
            hint = f" — did you mean: {', '.join(close)}?" if close else ""
            raise ManifestError(
                source, line, f"unknown column {name!r}{hint} (known: {', '.join(COLUMNS)})"
            )
    if "path" not in names:
        raise ManifestError(source, line, "a 'path' column is required")
    duplicated = {n for n in names if names.count(n) > 1 and n != "bbox"}
    if duplicated:
        raise ManifestError(source, line, f"column {sorted(duplicated)[0]!r} given twice")


# --------------------------------------------------------------------------- one row


def _row(fields: dict, source, line: int, seen: dict[str, int]) -> ManifestRow:
    base = Path(source).parent if isinstance(source, Path) else Path(".")
    spec_path = fields.get("path")
    if not isinstance(spec_path, str) or not spec_path.strip():
        raise ManifestError(source, line, "'path' is missing or empty")
    spec_path = spec_path.strip()
    row_id = str(fields.get("id", spec_path)).strip()
    if row_id in seen:
        raise ManifestError(
            source, line,
            f"image {row_id!r} is listed twice (first on line {seen[row_id]}); "
            "give each row a distinct 'id'",
        )
    seen[row_id] = line
    boxes = tuple(_boxes(fields["bbox"], source, line)) if "bbox" in fields else ()
    mask = None
    if "mask" in fields:
        if boxes:
            raise ManifestError(source, line, "give 'bbox' or 'mask', not both")
        if not isinstance(fields["mask"], str):
            raise ManifestError(source, line, "'mask' must be a path")
        mask = base / fields["mask"].strip()
    expected = fields.get("expected")
    if expected is not None and not isinstance(expected, (str, int)) or isinstance(expected, bool):
        raise ManifestError(source, line, f"'expected' must be a class index, WordNet id or "
                                          f"label, not {expected!r}")
    if isinstance(expected, str):
        expected = expected.strip()
    note = fields.get("note")
    thresholds = {
        name: _threshold(name, value, source, line)
        for name, value in fields.items()
        if name in BY_NAME
    }
    return ManifestRow(
        line=line,
        id=row_id,
        path=base / spec_path,
        spec_path=spec_path,
        expected=expected,
        boxes=boxes,
        mask=mask,
        note=None if note is None else str(note),
        thresholds=thresholds,
    )


def _threshold(name: str, value, source, line: int) -> float | str:
    if isinstance(value, str) and value.strip().lower() == OFF:
        return OFF
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ManifestError(source, line, f"{name} must be a number or 'off', not {value!r}")
    return number


def _boxes(value, source, line: int):
    """``"x0,y0,x1,y1"``, ``"a;b"``, ``[x0, y0, x1, y1]`` or a list of these."""
    if isinstance(value, str):
        parts = [p for p in value.replace("|", ";").split(";") if p.strip()]
        items: list = [p.split(",") for p in parts]
    elif isinstance(value, list) and value and all(not isinstance(v, (list, str)) for v in value):
        items = [value]
    elif isinstance(value, list):
        items = [v.split(",") if isinstance(v, str) else v for v in value]
    else:
        raise ManifestError(source, line, f"bad bbox {value!r}: expected 'x0,y0,x1,y1'")
    for item in items:
        if not isinstance(item, list) or len(item) != 4:
            raise ManifestError(source, line, f"bad bbox {item!r}: expected 4 numbers x0,y0,x1,y1")
        try:
            x0, y0, x1, y1 = (float(str(v).strip()) for v in item)
        except ValueError:
            raise ManifestError(
                source, line, f"bad bbox {','.join(map(str, item))!r}: not numbers"
            ) from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ManifestError(source, line, "bbox coordinates must be finite numbers")
        if x1 <= x0 or y1 <= y0:
            raise ManifestError(
                source, line,
                f"bad bbox {_fmt_box((x0, y0, x1, y1))}: needs x0 < x1 and y0 < y1",
            )
        if x1 <= 0 or y1 <= 0:
            raise ManifestError(source, line,
                                f"bbox {_fmt_box((x0, y0, x1, y1))} lies outside the image")
        yield (x0, y0, x1, y1)


def _fmt_box(box) -> str:
    return ",".join(f"{v:g}" for v in box)
