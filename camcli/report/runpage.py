"""The run report's page: counts, three charts and a grid of cards, drawn by the page itself.

The data (:func:`camcli.report.summary.page_data`) is embedded as JSON; the script draws the
charts as inline SVG and renders the cards in pages of :data:`PAGE_SIZE` as the reader scrolls
(an ``IntersectionObserver`` on a sentinel below the grid), so 10,000 inputs never mean 10,000
DOM nodes at once; thumbnails are ``loading="lazy"`` files beside the page. Sorting, filters and
search work on the data and re-render the first page. The view is kept in the URL's hash
(``#show=empty&sort=prob-asc``), so a filtered view can be bookmarked or shared. When the first
cards are in the DOM the script sets ``window.__camcliReady`` (milliseconds since navigation
start) and ``data-ready`` on ``<html>``.
"""

from __future__ import annotations

from camcli.report.page import JS_COMPARE, escape, html_page, json_script

PAGE_SIZE = 60

_CSS = """
header h1{display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.tiles{display:flex;gap:10px;flex-wrap:wrap;margin:12px 0 4px}
.tile{background:var(--soft);border:1px solid var(--line);border-radius:10px;padding:8px 14px;
min-width:120px;cursor:pointer;text-align:left;font:inherit;color:inherit}
.tile b{display:block;font-size:22px;line-height:1.2}.tile span{color:var(--muted);font-size:12.5px}
.tile.failed b{color:var(--bad)}.tile.empty b{color:var(--warn)}.tile.done b{color:var(--ok)}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:14px;
margin-top:12px}
.chart{background:var(--soft);border:1px solid var(--line);border-radius:10px;padding:8px 10px}
.chart h2{font-size:13px;margin:0 0 4px;font-weight:600}.chart svg{width:100%;height:auto;
display:block}.chart text{fill:var(--muted);font-size:10px}
.chart rect.bar{fill:var(--accent)}.chart rect.bar.other{fill:var(--muted)}
.chart rect.bar:hover{opacity:.75}.chart g.click{cursor:pointer}
.chart line{stroke:var(--line)}
#count{margin-left:auto}
.card{border-color:var(--line);display:flex;flex-direction:column;gap:6px}
.card.empty{border-color:var(--warn)}.card.failed{border-color:var(--bad-line)}
.card .id{font-size:13px}.card .dir{color:var(--muted);font-weight:400;font-size:12px}
.flags{display:flex;gap:4px;flex-wrap:wrap}
.flag{font-size:11px;font-weight:700;padding:0 7px;border-radius:9px;background:var(--soft)}
.flag.empty{background:var(--warn-bg);color:var(--warn)}
.flag.low{background:var(--soft);color:var(--muted)}
.flag.failed{background:var(--bad-bg);color:var(--bad)}
#grid{align-items:start}
.pics{margin:0}.pics img{aspect-ratio:4/3;object-fit:contain}
.pics .none{display:flex;align-items:center;justify-content:center;color:var(--muted);
font-size:12px;background:var(--soft);border-radius:4px;aspect-ratio:4/3;
text-align:center;padding:4px}
ol.top{margin:0;padding:0;list-style:none;font-size:12.5px}
ol.top li{display:grid;grid-template-columns:1fr 52px;gap:6px;position:relative;
padding:1px 4px;border-radius:3px;overflow:hidden}
ol.top li i{position:absolute;left:0;top:0;bottom:0;background:var(--accent);opacity:.16}
ol.top li span:last-child{text-align:right;font-variant-numeric:tabular-nums}
ol.top li:first-child{font-weight:600}
.explained{font-size:12px;color:var(--muted)}.explained a{margin-right:6px}
.reason{color:var(--bad);font-size:13px;word-break:break-word}
#more[hidden]{display:none}
#more{display:block;margin:0 auto 30px;font:inherit;padding:6px 16px;border-radius:6px;
border:1px solid var(--line);background:var(--panel);color:inherit;cursor:pointer}
.nothing{padding:30px 24px;color:var(--muted)}
"""

_JS = JS_COMPARE + r"""
const DATA=JSON.parse(document.getElementById('camcli-data').textContent);
const PAGE=%(page)d,NS='http://www.w3.org/2000/svg';
const $=id=>document.getElementById(id);
const grid=$('grid'),more=$('more');
const L=DATA.labels,D=DATA.dirs,T=DATA.thumbs;
function expand(c){return {kind:'done',id:c.id,name:c.name,label:L[c.label],prob:c.prob,
  share:c.share,empty:c.empty,top:c.top.map(([l,p])=>[L[l],p]),
  explained:c.explained.map(e=>({label:L[e.label],prob:e.prob,share:e.share,empty:e.empty,
    href:e.overlay?D[c.dir]+e.overlay:null})),
  input:c.input?D[c.input[0]]+c.input[1]:null,note:c.note||'input not found',
  thumb:c.thumb?T.input.replace('%%s',c.id):null,cam:c.cam?T.overlay.replace('%%s',c.id):null};}
const items=DATA.cards.map(expand).concat(
  DATA.failures.map(f=>Object.assign({kind:'failed',prob:null,share:null,empty:false},f)));
let view=[],shown=0;
function el(tag,attrs,...kids){const e=document.createElement(tag);
  for(const k in attrs||{}){if(attrs[k]!==null&&attrs[k]!==undefined)e.setAttribute(k,attrs[k]);}
  for(const k of kids){if(k!==null&&k!==undefined)e.append(k);}return e;}
function svg(tag,attrs,...kids){const e=document.createElementNS(NS,tag);
  for(const k in attrs)e.setAttribute(k,attrs[k]);for(const k of kids)e.append(k);return e;}
function pct(p){return p===null?'—':(100*p).toFixed(1)+' %%';}
function base(name){const i=name.lastIndexOf('/');return [name.slice(0,i+1),name.slice(i+1)];}
// ------------------------------------------------------------------ state, kept in the hash
const state={q:'',show:'all',cls:'',sort:'name',low:DATA.low_confidence};
function readHash(){const h=new URLSearchParams(location.hash.slice(1));
  for(const k in state){if(h.has(k))state[k]=k==='low'?parseFloat(h.get(k)):h.get(k);}
  if(!(state.low>=0&&state.low<=1))state.low=DATA.low_confidence;}
function writeHash(){const h=new URLSearchParams();
  for(const k in state){if(String(state[k])!==String(DEFAULTS[k]))h.set(k,state[k]);}
  const text=h.toString();history.replaceState(null,'',text?'#'+text:location.pathname);}
const DEFAULTS=Object.assign({},state);
function low(c){return c.kind==='done'&&c.prob<state.low;}
function keep(c){
  if(state.show==='done'&&c.kind!=='done')return false;
  if(state.show==='failed'&&c.kind!=='failed')return false;
  if(state.show==='empty'&&!c.empty)return false;
  if(state.show==='low'&&!low(c))return false;
  if(state.cls&&c.label!==state.cls)return false;
  if(state.q&&!c.name.toLowerCase().includes(state.q.toLowerCase()))return false;
  return true;}
const SORTS={'name':[c=>c.name,1],'prob-desc':[c=>c.prob,-1],'prob-asc':[c=>c.prob,1],
  'share-desc':[c=>c.share,-1],'share-asc':[c=>c.share,1]};
function apply(){writeHash();const [key,sign]=SORTS[state.sort]||SORTS.name;
  view=items.filter(keep);
  view.sort((a,b)=>compare(key(a),key(b),sign)||compare(a.name,b.name,1));
  grid.replaceChildren();shown=0;renderMore();
  $('count').textContent=
    `showing ${view.length.toLocaleString()} of ${items.length.toLocaleString()}`;
  if(!view.length)grid.append(el('div',{class:'nothing'},'No input matches these filters.'));}
// ------------------------------------------------------------------ cards
function pics(c){
  const ex=c.explained[0]||{};
  const input=c.thumb?el('img',{src:c.thumb,alt:'input',loading:'lazy',decoding:'async'})
    :el('span',{class:'none input'},c.note);
  const cam=c.cam?el('img',{src:c.cam,alt:'overlay',loading:'lazy',decoding:'async'})
    :el('span',{class:'none'},ex.empty?'empty map':'no overlay');
  return el('div',{class:'pics'},
    c.input&&c.thumb?el('a',{href:c.input,target:'_blank',title:'the input'},input)
      :el('span',{},input),
    ex.href?el('a',{href:ex.href,target:'_blank',title:'full-resolution overlay'},cam)
      :el('span',{},cam));}
function flags(c){const f=el('div',{class:'flags'});
  if(c.kind==='failed')f.append(el('span',{class:'flag failed'},'FAILED'));
  if(c.empty)f.append(el('span',{class:'flag empty'},'EMPTY MAP'));
  if(low(c))f.append(el('span',{class:'flag low'},'LOW CONFIDENCE'));return f;}
function card(c){const [dir,file]=base(c.name);
  const head=el('div',{class:'id',title:c.name},el('span',{class:'dir'},dir),file);
  if(c.kind==='failed')return el('div',{class:'card failed','data-name':c.name},head,flags(c),
    el('div',{class:'reason'},c.error));
  const top=el('ol',{class:'top'},...c.top.map(([label,prob])=>{const i=el('i');
    i.style.width=(100*prob).toFixed(1)+'%%';
    return el('li',{},i,el('span',{},label),el('span',{},pct(prob)));}));
  const ex=el('div',{class:'explained'},...c.explained.map(e=>el('div',{},
    e.href?el('a',{href:e.href,target:'_blank'},'map'):'',
    `for ${e.label} (${pct(e.prob)}) · sharpness ${e.share===null?'—':e.share.toFixed(2)}`)));
  return el('div',{class:'card'+(c.empty?' empty':''),'data-name':c.name},head,flags(c),pics(c),
    top,ex);}
function renderMore(){const end=Math.min(view.length,shown+PAGE);
  const frag=document.createDocumentFragment();
  for(let i=shown;i<end;i++)frag.append(card(view[i]));grid.append(frag);shown=end;
  more.hidden=shown>=view.length;
  more.textContent=`show more (${(view.length-shown).toLocaleString()} left)`;}
// ------------------------------------------------------------------ charts
function barChart(bars){const row=16,w=320,lw=120,h=Math.max(row,bars.length*row)+4;
  const max=Math.max(1,...bars.map(b=>b.count));
  const s=svg('svg',{viewBox:`0 0 ${w} ${h}`,'data-chart':'classes',role:'img'});
  bars.forEach((b,i)=>{const bw=(w-lw-40)*b.count/max,y=i*row+2;
    const g=svg('g',{class:b.other?'':'click'},svg('title',{},`${b.label}: ${b.count}`),
      svg('text',{x:lw-4,y:y+11,'text-anchor':'end'},b.label.length>20?b.label.slice(0,19)+'…':b.label),
      svg('rect',{class:'bar'+(b.other?' other':''),x:lw,y:y+2,width:Math.max(1,bw),height:row-4,
        'data-label':b.label,'data-count':b.count,rx:2}),
      svg('text',{x:lw+bw+4,y:y+11},String(b.count)));
    if(!b.other)g.addEventListener('click',()=>{state.cls=state.cls===b.label?'':b.label;
      $('cls').value=state.cls;apply();});
    s.append(g);});
  return s;}
function histogram(name,hist,label){const w=320,h=140,l=28,b=30,n=hist.counts.length;
  const max=Math.max(1,...hist.counts),bw=(w-l-6)/n;
  const s=svg('svg',{viewBox:`0 0 ${w} ${h}`,'data-chart':name,role:'img'});
  s.append(svg('line',{x1:l,y1:h-b,x2:w-4,y2:h-b}));
  s.append(svg('text',{x:l-4,y:10,'text-anchor':'end'},String(max)));
  hist.counts.forEach((c,i)=>{const bh=(h-b-14)*c/max;
    s.append(svg('g',{},svg('title',{},`${hist.edges[i]}–${hist.edges[i+1]}: ${c}`),
      svg('rect',{class:'bar',x:l+i*bw+1,y:h-b-bh,width:Math.max(0,bw-2),height:bh,
        'data-count':c,'data-from':hist.edges[i],'data-to':hist.edges[i+1]})));});
  [0,Math.floor(n/2),n].forEach(i=>s.append(svg('text',{x:l+i*bw,y:h-b+12,
    'text-anchor':i===0?'start':i===n?'end':'middle'},String(hist.edges[i]))));
  s.append(svg('text',{x:(w+l)/2,y:h-2,'text-anchor':'middle'},label));
  return s;}
function charts(){const c=DATA.charts;
  $('chart-classes').append(c.classes.length?barChart(c.classes)
    :el('p',{class:'meta'},'no records'));
  $('chart-probability').append(histogram('probability',c.probability,'top-1 probability'));
  $('chart-sharpness').append(histogram('sharpness',c.sharpness,
    'top20_energy_share (0.2 diffuse … 1 sharp)'));}
// ------------------------------------------------------------------ controls
function controls(){const cls=$('cls');
  for(const label of DATA.classes)cls.append(el('option',{value:label},label));
  readHash();
  for(const k of ['q','show','cls','sort','low']){const input=$(k);input.value=state[k];
    input.addEventListener(k==='q'?'input':'change',()=>{
      state[k]=k==='low'?parseFloat(input.value):input.value;apply();});}
  document.querySelectorAll('.tile').forEach(t=>t.addEventListener('click',()=>{
    state.show=t.dataset.show;$('show').value=state.show;apply();}));
  more.addEventListener('click',renderMore);
  if('IntersectionObserver' in window)new IntersectionObserver(es=>{
    if(es.some(e=>e.isIntersecting)&&shown<view.length)renderMore();},
    {rootMargin:'1200px'}).observe(more);}
charts();controls();apply();
requestAnimationFrame(()=>{window.__camcliReady=performance.now();
  document.documentElement.dataset.ready='1';});
"""


def _tile(key: str, count: int, label: str, show: str) -> str:
    return (f'<button class="tile {key}" data-show="{show}" data-count="{count}" '
            f'id="tile-{key}"><b>{count:,}</b><span>{escape(label)}</span></button>')


def run_report_html(data: dict) -> bytes:
    """The page for :func:`~camcli.report.summary.page_data`'s ``data``."""
    counts = data["counts"]
    low = data["low_confidence"]
    tiles = "".join((
        _tile("done", counts["done"], "explained", "done"),
        _tile("failed", counts["failed"], "failed", "failed"),
        _tile("empty", counts["empty"], "with an empty map", "empty"),
        _tile("low", counts["low_confidence"], f"top-1 probability < {low:g}", "low"),
    ))
    body = f"""<header>
<h1>{escape(data['title'])}</h1>
<div class="meta">built {escape(data['created'])} · click a tile or a class bar to filter ·
click an overlay for its full resolution</div>
<div class="tiles">{tiles}</div>
<div class="charts">
<div class="chart"><h2>Most frequent top-1 classes</h2><div id="chart-classes"></div></div>
<div class="chart"><h2>Top-1 probability</h2><div id="chart-probability"></div></div>
<div class="chart"><h2>Map sharpness (empty maps left out)</h2>
<div id="chart-sharpness"></div></div>
</div></header>
<div class="controls">
<input id="q" type="search" placeholder="search file names" aria-label="search file names">
<label>show <select id="show"><option value="all">everything</option>
<option value="done">explained</option><option value="failed">failed inputs</option>
<option value="empty">empty maps</option><option value="low">low confidence</option>
</select></label>
<label>class <select id="cls"><option value="">all classes</option></select></label>
<label>sort <select id="sort"><option value="name">name</option>
<option value="prob-desc">probability, highest first</option>
<option value="prob-asc">probability, lowest first</option>
<option value="share-desc">sharpness, sharpest first</option>
<option value="share-asc">sharpness, most diffuse first</option></select></label>
<label>low confidence below <input id="low" type="number" min="0" max="1" step="0.05"
style="width:5em"></label>
<span id="count" class="meta"></span></div>
<div id="grid"></div>
<button id="more" type="button" hidden>show more</button>
{json_script('camcli-data', data)}"""
    return html_page(data["title"], body, _CSS, _JS % {"page": PAGE_SIZE})
