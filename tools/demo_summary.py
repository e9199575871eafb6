"""The last lines of ``make demo``: each photo's top-1 class, and where the outputs are.

    .venv/bin/python tools/demo_summary.py demo-out

Reads the JSON records (``*.cam.json``, the schema in the README's "Outputs") that
``camcli explain --out-dir demo-out`` wrote, so what it prints is what the records say. Standard
library only; exits 1 when the folder holds no record (the demo did not run).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarize(out_dir: Path) -> list[str]:
    """The lines to print for the records under ``out_dir`` (sorted by input path)."""
    records = [json.loads(path.read_text("utf-8")) for path in out_dir.rglob("*.cam.json")]
    records.sort(key=lambda record: record["input"]["path"])
    if not records:
        return []
    models = sorted({record["model"]["name"] for record in records})
    width = max(len(record["input"]["path"]) for record in records)
    lines = [f"top-1 class of each photo ({', '.join(models)}):"]
    for record in records:
        best = record["predictions"][0]
        lines.append(
            f"  {record['input']['path']:<{width}}  {best['label']} "
            f"({best['probability']:.0%}, class {best['index']})"
        )
    folders = sorted({str(path.parent) for path in out_dir.rglob("*.cam.json")})
    lines.append(f"overlays (*.cam.png) and JSON records (*.cam.json) are in: {', '.join(folders)}")
    return lines


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0] if argv else "demo-out")
    lines = summarize(out_dir)
    if not lines:
        print(f"demo_summary: no camcli records under {out_dir}/", file=sys.stderr)
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
