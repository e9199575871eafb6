"""The audit's machine-readable outputs: aggregates, ``audit.json``, ``junit.xml`` and
``summary.md``; and the one way they are written (atomically, like every camcli output).

Everything but :func:`write_report` builds bytes or strings from the audit record, so the formats
are tested without running a model.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from camcli.audit import metrics
from camcli.errors import printable
from camcli.outputs import replace_atomically, to_json_bytes

AUDIT_SCHEMA_VERSION = 1
#: Metrics aggregated over images, in report order (booleans count as 0/1).
AGGREGATED = (
    "top1",
    "topk",
    "expected_probability",
    "pointing",
    "energy_in_box",
    "average_drop",
    "increase_in_confidence",
    "deletion_auc",
    "insertion_auc",
    "top1_changed",
    "probability_drop",
    "map_correlation",
    "map_iou_top20",
    "map_drift",
)
BOOTSTRAP_SAMPLES = 2000
BOOTSTRAP_SEED = 0
MAX_FAILURES_LISTED = 25


def aggregate(images: list[dict]) -> dict:
    """Mean and 95 % bootstrap interval of every metric over the images that have it."""
    out = {}
    for name in AGGREGATED:
        values = [
            float(image["metrics"][name])
            for image in images
            if image.get("ok") and image["metrics"].get(name) is not None
        ]
        if not values:
            continue
        mean, low, high = metrics.bootstrap_mean_ci(
            values, samples=BOOTSTRAP_SAMPLES, seed=BOOTSTRAP_SEED
        )
        out[name] = {"n": len(values), "mean": mean, "ci95": [low, high]}
    return out


def summarize(images: list[dict], mean_checks: list[dict] = ()) -> dict:
    """Counts of images and checks by outcome; ``passed`` decides the exit status."""
    checks = [check for image in images for check in image["checks"]] + list(mean_checks)
    count = {status: sum(c["status"] == status for c in checks)
             for status in ("pass", "fail", "skip", "error")}
    failed_images = sum(not image["passed"] for image in images)
    failed_means = sum(c["status"] == "fail" for c in mean_checks)
    return {
        "images": len(images),
        "failed_images": failed_images,
        "unreadable_images": sum(not image["ok"] for image in images),
        "checks": len(checks),
        "passed_checks": count["pass"],
        "failed_checks": count["fail"],
        "skipped_checks": count["skip"],
        "errors": count["error"],
        "mean_checks": len(mean_checks),
        "failed_mean_checks": failed_means,
        "passed": failed_images == 0 and failed_means == 0,
    }


# --------------------------------------------------------------------------- junit.xml


def junit_xml(record: dict) -> bytes:
    """One ``<testcase>`` per image and check (classname = image id, name = check), and one per
    ``--mean`` check (classname ``audit.mean``).

    Failed thresholds are ``<failure>``, unreadable images ``<error>``, checks whose metric does
    not exist for the image ``<skipped>``: every CI system shows them natively.
    """
    summary = record["summary"]
    manifest = Path(record["manifest"]["path"]).name
    attributes = {
        "tests": str(summary["checks"]),
        "failures": str(summary["failed_checks"]),
        "errors": str(summary["errors"]),
        "skipped": str(summary["skipped_checks"]),
        "time": f"{record['seconds']:.3f}",
    }
    root = ET.Element("testsuites", {"name": "camcli audit", **attributes})
    suite = ET.SubElement(
        root, "testsuite", {"name": f"camcli audit {manifest}", "timestamp": record["created"],
                            **attributes}
    )
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("model", record["model"]["name"]),
        ("layer", record["model"]["layer"]),
        ("method", record["method"]),
        ("manifest_sha256", record["manifest"]["sha256"]),
    ):
        ET.SubElement(properties, "property", {"name": name, "value": str(value)})
    cases = [(f"audit.{image['id']}", f"{image['path']} (manifest line {image['line']})",
              check) for image in record["images"] for check in image["checks"]]
    cases += [("audit.mean", f"mean over the manifest's {summary['images']} images", check)
              for check in record.get("mean_checks", [])]
    for classname, where, check in cases:
        case = ET.SubElement(suite, "testcase",
                             {"classname": classname, "name": check["name"], "time": "0"})
        if check["status"] == "fail":
            failure = ET.SubElement(case, "failure",
                                    {"message": check["message"], "type": "threshold"})
            failure.text = f"{where}: {check['message']}"
        elif check["status"] == "error":
            error = ET.SubElement(case, "error", {"message": check["message"],
                                                  "type": "unreadable"})
            error.text = f"{where}: {check['message']}"
        elif check["status"] == "skip":
            ET.SubElement(case, "skipped", {"message": check["message"]})
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


# --------------------------------------------------------------------------- summary.md


def summary_markdown(record: dict, report_name: str = "report.html") -> str:
    """A short Markdown summary for the CI log and ``$GITHUB_STEP_SUMMARY``."""
    summary = record["summary"]
    model = record["model"]
    verdict = ("✅ passed: " if summary["passed"] else "❌ failed: ") + verdict_text(summary)
    lines = [
        f"## camcli audit — {verdict}",
        "",
        f"Model {md_code(model['name'])} · layer {md_code(model['layer'])} · "
        f"method {md_code(record['method'])} · "
        f"manifest {md_code(Path(record['manifest']['path']).name)}"
        + (f" · baseline {md_code(Path(record['baseline']['path']).name)}"
           if record.get("baseline") else ""),
        "",
    ]
    if record["aggregates"]:
        lines += ["| metric | mean | 95 % CI | images |", "| --- | ---: | ---: | ---: |"]
        for name, agg in record["aggregates"].items():
            low, high = agg["ci95"]
            lines.append(f"| {name} | {agg['mean']:.4g} | {low:.4g} – {high:.4g} | {agg['n']} |")
        lines.append("")
    failures = [
        (f"mean of {summary['images']} images", check)
        for check in record.get("mean_checks", [])
        if check["status"] == "fail"
    ] + [
        (md_code(image["id"], table=True), check)
        for image in record["images"]
        for check in image["checks"]
        if check["status"] in ("fail", "error")
    ]
    if failures:
        lines += ["### Failed checks", "", "| image | check | result |", "| --- | --- | --- |"]
        for where, check in failures[:MAX_FAILURES_LISTED]:
            lines.append(f"| {where} | {md_text(check['name'])} | {md_text(check['message'])} |")
        if len(failures) > MAX_FAILURES_LISTED:
            lines.append(f"| … | {len(failures) - MAX_FAILURES_LISTED} more | see junit.xml |")
        lines.append("")
    lines.append(f"Details: `{report_name}` (thumbnails, overlays, every metric), `audit.json`.")
    return "\n".join(lines) + "\n"


def verdict_text(summary: dict) -> str:
    """``24 checks on 8 images`` when passed, else what failed: ``3 of 16 image checks failed
    on 2 of 8 images; 1 of 2 mean checks failed``."""
    if summary["passed"]:
        return f"{summary['passed_checks']} checks on {summary['images']} images"
    means, failed_means = summary.get("mean_checks", 0), summary.get("failed_mean_checks", 0)
    parts = []
    if summary["failed_images"] or not failed_means:
        failed = summary["failed_checks"] + summary["errors"] - failed_means
        parts.append(f"{failed} of {summary['checks'] - means} image checks failed on "
                     f"{summary['failed_images']} of {summary['images']} images")
    if failed_means:
        parts.append(f"{failed_means} of {means} mean checks failed")
    return "; ".join(parts)


# User-controlled text (ids, paths, names, labels, reasons) never reaches summary.md as markup.
#: Characters that can start inline markup (code, emphasis, links, HTML, entities, table cells).
_INLINE_MARKUP = re.compile(r"[\\`*\[\]<>&|~!]|(?<![^\W_])_|_(?![^\W_])")


def md_text(text) -> str:
    """``text`` as Markdown that renders literally, on one line (CommonMark backslash escapes;
    an underscore inside a word, ``min_energy_in_box``, is left as it is: it emphasises nothing).
    Safe in a table cell: a ``|`` is escaped."""
    return _INLINE_MARKUP.sub(lambda m: "\\" + m.group(), printable(text))


def md_code(text, table: bool = False) -> str:
    """``text`` as an inline code span nothing in it can end: its fence is one backtick longer
    than the longest run of backticks inside, padded with a space when it starts or ends with a
    backtick or a space (CommonMark strips one on each side). In a table cell (``table``) a
    ``|`` is escaped, which GitHub's tables turn back into ``|`` inside code."""
    text = printable(text) or " "  # an empty code span is not one: show a space
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.strip() and (text[0] in "` " or text[-1] in "` ") else ""
    if table:
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"


def append_step_summary(markdown: str, environ=os.environ) -> Path | None:
    """Append to ``$GITHUB_STEP_SUMMARY`` when set (GitHub Actions shows it on the run page)."""
    target = environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        return None
    with open(target, "a", encoding="utf-8") as handle:
        handle.write(markdown + "\n")
    return Path(target)


# --------------------------------------------------------------------------- writing


def audit_json(record: dict) -> bytes:
    return to_json_bytes(record)


def write_report(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically. Not :func:`camcli.outputs.atomic_write`: that one refuses to
    replace files whose names are not camcli's per-image output names, and the audit's reports
    have fixed names that a second audit into the same folder must replace."""
    replace_atomically(path, data)
