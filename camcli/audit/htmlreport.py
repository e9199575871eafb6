"""``report.html``: one self-contained page a person opens from the CI artifacts.

A header with the verdict, the aggregates and the protocol, then a grid with one card per image:
the image and its overlay (ground truth drawn on both, thumbnails inlined as ``data:`` URIs so
the page needs no other file; each overlay links to its full-size file in ``overlays/``), the
classes, every metric and each check's outcome. A few lines of inline JavaScript sort the grid by
any metric and hide the passing cards. No external CSS, fonts or scripts: it opens offline.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from camcli.audit.reports import AGGREGATED, verdict_text

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;
color:#1d2330}
header{background:#fff;padding:16px 24px;border-bottom:1px solid #dde1e6}
h1{font-size:20px;margin:0 0 6px}h1 .pass{color:#137333}h1 .fail{color:#b3261e}
.meta{color:#555}table.agg{border-collapse:collapse;margin-top:10px}
table.agg td,table.agg th{padding:2px 10px;border-bottom:1px solid #e3e6ea;text-align:right}
table.agg td:first-child,table.agg th:first-child{text-align:left}
.controls{padding:10px 24px;display:flex;gap:14px;align-items:center;flex-wrap:wrap}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;
padding:0 24px 24px}
.card{background:#fff;border-radius:8px;border:2px solid #cfe8d5;padding:10px;overflow:hidden}
.card.fail{border-color:#f1b3ad}.card .id{font-weight:600;word-break:break-all}
.badge{float:right;font-size:12px;font-weight:700;padding:1px 8px;border-radius:10px}
.pass .badge{background:#e6f4ea;color:#137333}.fail .badge{background:#fce8e6;color:#b3261e}
.pics{display:flex;gap:6px;margin:8px 0}.pics img{width:100%;height:auto;display:block;
border-radius:4px;background:#ddd}.pics a,.pics span{flex:1}
table.m{width:100%;border-collapse:collapse;font-size:12.5px}
table.m td{padding:1px 4px;border-bottom:1px solid #f0f1f3}table.m td:last-child{text-align:right}
ul.checks{margin:6px 0 0;padding-left:18px;font-size:12.5px}
li.fail,li.error{color:#b3261e;font-weight:600}li.skip{color:#888}
.note{color:#555;font-style:italic}.error{color:#b3261e}
details{margin-top:8px}pre{white-space:pre-wrap;font-size:12px}
"""

_JS = """
const grid=document.getElementById('grid');
const key=document.getElementById('sort'),dir=document.getElementById('dir'),
only=document.getElementById('failed');
function value(card,name){const v=card.dataset[name];return v===undefined||v===''?null:
(name==='id'?v:parseFloat(v));}
function sort(){const name=key.value,sign=dir.value==='asc'?1:-1;
const cards=[...grid.querySelectorAll('.card')];
cards.sort((a,b)=>{const x=value(a,name),y=value(b,name);
if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
return (x<y?-1:x>y?1:0)*sign;});cards.forEach(c=>grid.appendChild(c));}
function filter(){grid.querySelectorAll('.card').forEach(c=>{
c.style.display=only.checked&&c.classList.contains('pass')?'none':'';});}
key.addEventListener('change',sort);dir.addEventListener('change',sort);
only.addEventListener('change',filter);sort();
"""


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


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
            f"<tr><td>{escape(name)}</td><td>{escape(_fmt(value))}</td></tr>"
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
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body><header>
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
</div>
<script>{_JS}</script>
</body></html>
"""
    return page.encode("utf-8")
