"""``report.html``: one self-contained page a person opens from the CI artifacts.

A header with the verdict, the aggregates and the protocol, then a grid with one card per image:
the image and its overlay (ground truth drawn on both, thumbnails inlined as ``data:`` URIs so
the page needs no other file; each overlay links to its full-size file in ``overlays/``), the
classes, every metric and each check's outcome. A few lines of inline JavaScript sort the grid by
any metric and hide the passing cards. The page shell and theme are :mod:`camcli.report.page`,
shared with the run report.
"""

from __future__ import annotations

import json
from pathlib import Path

from camcli.audit.reports import AGGREGATED, verdict_text
from camcli.report.page import JS_COMPARE, escape, fmt, html_page

_CSS = """
table.agg{border-collapse:collapse;margin-top:10px}
table.agg td,table.agg th{padding:2px 10px;border-bottom:1px solid var(--line);text-align:right}
table.agg td:first-child,table.agg th:first-child{text-align:left}
ul.checks{margin:6px 0 0;padding-left:18px;font-size:12.5px}
li.fail,li.error{color:var(--bad);font-weight:600}li.skip{color:var(--muted)}
.note{color:var(--muted);font-style:italic}
details{margin-top:8px}pre{white-space:pre-wrap;font-size:12px}
"""

_JS = JS_COMPARE + """
const grid=document.getElementById('grid');
const key=document.getElementById('sort'),dir=document.getElementById('dir'),
only=document.getElementById('failed');
function value(card,name){const v=card.dataset[name];return v===undefined||v===''?null:
(name==='id'?v:parseFloat(v));}
function sort(){const name=key.value,sign=dir.value==='asc'?1:-1;
const cards=[...grid.querySelectorAll('.card')];
cards.sort((a,b)=>compare(value(a,name),value(b,name),sign));
cards.forEach(c=>grid.appendChild(c));}
function filter(){grid.querySelectorAll('.card').forEach(c=>{
c.style.display=only.checked&&c.classList.contains('pass')?'none':'';});}
key.addEventListener('change',sort);dir.addEventListener('change',sort);
only.addEventListener('change',filter);sort();
"""


def _dataset_name(metric: str) -> str:
    """``data-*`` attribute names must be lower case; JS reads them back through ``dataset``."""
    return metric.replace("_", "")


def _card(image: dict, thumbnails: dict[str, tuple[str, str]]) -> str:
    status = "pass" if image["passed"] else "fail"
    failed = sum(c["status"] in ("fail", "error") for c in image["checks"])
    data = {"id": image["id"], "failed": str(failed), "line": str(image["line"])}
    if image.get("ok"):
        for name, value in image["metrics"].items():
            if value is not None:
                data[_dataset_name(name)] = repr(float(value))
    attributes = " ".join(f'data-{k}="{escape(v)}"' for k, v in data.items())
    parts = [f'<div class="card {status}" {attributes}>',
             f'<span class="badge">{"PASS" if image["passed"] else "FAIL"}</span>',
             f'<div class="id">{escape(image["id"])}</div>']
    if image.get("note"):
        parts.append(f'<div class="note">{escape(image["note"])}</div>')
    if not image.get("ok"):
        parts.append(f'<div class="error">{escape(image["error"])}</div>')
    else:
        picture, overlay = thumbnails.get(image["id"], ("", ""))
        link = escape(image["overlay"]) if image.get("overlay") else None
        overlay_img = f'<img alt="overlay" src="{overlay}">'
        parts.append(
            '<div class="pics">'
            f'<span><img alt="image" src="{picture}"></span>'
            + (f'<a href="{link}">{overlay_img}</a>' if link else f"<span>{overlay_img}</span>")
            + "</div>"
        )
        explained = image["explained"]
        expected = image.get("expected")
        top = image["predictions"][0]
        rows = [
            ("expected", f"{expected['index']} {expected['label']}" if expected else None),
            ("predicted", f"{top['index']} {top['label']} ({top['probability']:.3f})"),
            ("map for", f"{explained['index']} {explained['label']} ({explained['reason']})"),
        ]
        rows += [(name, value) for name, value in image["metrics"].items() if value is not None]
        parts.append('<table class="m">' + "".join(
            f"<tr><td>{escape(name)}</td><td>{escape(fmt(value))}</td></tr>"
            for name, value in rows
        ) + "</table>")
    if image["checks"]:
        ordered = sorted(image["checks"], key=lambda c: c["status"] not in ("fail", "error"))
        parts.append('<ul class="checks">' + "".join(
            f'<li class="{c["status"]}">{escape(c["name"])}: {escape(c["message"])}</li>'
            for c in ordered
        ) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def report_html(record: dict, thumbnails: dict[str, tuple[str, str]]) -> bytes:
    """The page for an audit record; ``thumbnails`` maps image id to (image, overlay) URIs."""
    summary = record["summary"]
    model = record["model"]
    passed = summary["passed"]
    verdict = ('<span class="pass">PASSED</span> — ' if passed
               else '<span class="fail">FAILED</span> — ') + escape(verdict_text(summary))
    means = "".join(
        f'<li class="{c["status"]}">{escape(c["name"])}: {escape(c["message"])}</li>'
        for c in record.get("mean_checks", [])
    )
    aggregates = "".join(
        f"<tr><td>{escape(name)}</td><td>{agg['mean']:.4g}</td>"
        f"<td>{agg['ci95'][0]:.4g} – {agg['ci95'][1]:.4g}</td><td>{agg['n']}</td></tr>"
        for name, agg in record["aggregates"].items()
    )
    metric_names = [m for m in AGGREGATED if m in record["aggregates"]]
    options = ['<option value="failed" selected>failed checks</option>',
               '<option value="id">image</option>', '<option value="line">manifest line</option>']
    options += [f'<option value="{_dataset_name(m)}">{escape(m)}</option>' for m in metric_names]
    cards = "\n".join(_card(image, thumbnails) for image in record["images"])
    protocol = escape(json.dumps(
        {"settings": record["settings"], "protocol": record["protocol"]}, indent=2
    ))
    title = f"camcli audit — {Path(record['manifest']['path']).name}"
    body = f"""<header>
<h1>{escape(title)}: {verdict}</h1>
<div class="meta">model <b>{escape(str(model['name']))}</b> · layer
<b>{escape(str(model['layer']))}</b> · method <b>{escape(record['method'])}</b> ·
{escape(record['created'])}{
    f" · baseline <b>{escape(Path(record['baseline']['path']).name)}</b>"
    if record.get('baseline') else ''}</div>
<table class="agg"><tr><th>metric</th><th>mean</th><th>95 % CI</th><th>images</th></tr>
{aggregates}</table>
{f'<ul class="checks">{means}</ul>' if means else ''}
<details><summary>settings and protocol</summary><pre>{protocol}</pre></details>
</header>
<div class="controls"><label>sort by <select id="sort">{''.join(options)}</select></label>
<select id="dir"><option value="desc" selected>descending</option>
<option value="asc">ascending</option></select>
<label><input type="checkbox" id="failed"> failures only</label>
<span class="meta">{summary['images']} images</span></div>
<div id="grid">
{cards}
</div>"""
    return html_page(title, body, _CSS, _JS)
