"""The HTML machinery both reports share: the page shell, the theme, escaping, embedded data.

Every page camcli writes is one self-contained file: inline CSS and JavaScript, no CDN, no
fonts, data embedded as JSON in a ``<script type="application/json">`` element, so it opens from
``file://``, from a CI artifact viewer and offline. The theme follows the reader's light or dark
preference (``prefers-color-scheme``) through CSS variables that each page's own rules use.
"""

from __future__ import annotations

import json
from html import escape

__all__ = ["BASE_CSS", "JS_COMPARE", "escape", "fmt", "html_page", "json_script"]

#: Colours, header, controls, card grid and badges, in light and dark.
BASE_CSS = """
:root{color-scheme:light dark;--bg:#f4f5f7;--panel:#fff;--fg:#1d2330;--muted:#5b6472;
--line:#dde1e6;--soft:#eef0f3;--accent:#2f6fde;--ok:#137333;--ok-bg:#e6f4ea;--ok-line:#cfe8d5;
--bad:#b3261e;--bad-bg:#fce8e6;--bad-line:#f1b3ad;--warn:#9a5b00;--warn-bg:#fff3dc}
@media (prefers-color-scheme:dark){:root{--bg:#121417;--panel:#1c1f24;--fg:#e6e8eb;
--muted:#9aa3ae;--line:#30353c;--soft:#262a30;--accent:#7aa7ff;--ok:#7fd08f;--ok-bg:#1d3324;
--ok-line:#2f5a3a;--bad:#ff8a80;--bad-bg:#3a1f1d;--bad-line:#6b302b;--warn:#ffc266;
--warn-bg:#3a2d14}}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:var(--bg);
color:var(--fg)}
a{color:var(--accent)}
header{background:var(--panel);padding:16px 24px;border-bottom:1px solid var(--line)}
h1{font-size:20px;margin:0 0 6px}h1 .pass{color:var(--ok)}h1 .fail{color:var(--bad)}
.meta{color:var(--muted)}
.controls{padding:10px 24px;display:flex;gap:14px;align-items:center;flex-wrap:wrap}
.controls select,.controls input{font:inherit;color:inherit;background:var(--panel);
border:1px solid var(--line);border-radius:6px;padding:3px 6px}
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:14px;
padding:0 24px 24px}
.card{background:var(--panel);border-radius:8px;border:2px solid var(--ok-line);padding:10px;
overflow:hidden}
.card.fail{border-color:var(--bad-line)}.card .id{font-weight:600;word-break:break-all}
.badge{float:right;font-size:12px;font-weight:700;padding:1px 8px;border-radius:10px}
.pass .badge{background:var(--ok-bg);color:var(--ok)}
.fail .badge{background:var(--bad-bg);color:var(--bad)}
.pics{display:flex;gap:6px;margin:8px 0}.pics img{width:100%;height:auto;display:block;
border-radius:4px;background:var(--soft)}.pics a,.pics span{flex:1}
table.m{width:100%;border-collapse:collapse;font-size:12.5px}
table.m td{padding:1px 4px;border-bottom:1px solid var(--soft)}
table.m td:last-child{text-align:right}
.error{color:var(--bad)}
"""

#: ``compare(x, y, sign)``: order two sort keys, ``null`` (no value) always last.
JS_COMPARE = """
function compare(x,y,sign){if(x===null&&y===null)return 0;if(x===null)return 1;
if(y===null)return -1;return (x<y?-1:x>y?1:0)*sign;}
"""


def fmt(value) -> str:
    """A metric for people: 4 significant digits, yes/no, a dash for a missing value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def json_script(element_id: str, data) -> str:
    """``data`` as an inert ``application/json`` script element; the page reads it with
    ``JSON.parse(document.getElementById(element_id).textContent)``.

    ``<``, ``>`` and ``&`` are written as JSON escapes, so no string in the data (a file named
    ``</script>.png``) can end the element early; the parsed value is unchanged.
    """
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{escape(element_id)}">{text}</script>'


def html_page(title: str, body: str, css: str = "", script: str = "") -> bytes:
    """A complete page: the shared theme plus the page's own ``css``, ``body`` (HTML) and
    ``script`` (run at the end of the body)."""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{BASE_CSS}{css}</style></head>
<body>{body}
<script>{script}</script>
</body></html>
"""
    return page.encode("utf-8")
