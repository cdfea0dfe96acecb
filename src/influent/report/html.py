"""One self-contained HTML file per run: inline CSS, base64 PNGs, no scripts and nothing fetched from a network."""
from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .record import Record

REPORT = "report.html"

CSS = """
:root{--ink:#2b2d42;--muted:#6b7080;--line:#e3e6ee;--bg:#f6f7fb;--card:#fff;--pos:#1b8a5a;--neg:#d1495b;--acc:#3c64b4}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
color:var(--ink);background:var(--bg)}main{max-width:1180px;margin:0 auto;padding:0 24px 48px}
header{background:linear-gradient(135deg,#243b6b,#3c64b4);color:#fff;padding:28px 24px 22px;margin-bottom:22px}
header .in{max-width:1180px;margin:0 auto}header h1{margin:0 0 4px;font-size:26px;font-weight:650}
header p{margin:0;opacity:.85}nav{margin-top:14px;display:flex;gap:16px;flex-wrap:wrap}
nav a{color:#fff;text-decoration:none;border-bottom:1px solid rgba(255,255,255,.4);font-size:13px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(118px,1fr));gap:12px;margin:0 0 24px}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 14px}
.card b{display:block;font-size:20px;font-weight:650}.card span{color:var(--muted);font-size:12px}
section{margin:0 0 30px}h2{font-size:19px;margin:0 0 6px}p.note{color:var(--muted);margin:0 0 14px;max-width:820px}
article.query{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:16px;margin:0 0 16px}
.qhead{display:flex;gap:18px;align-items:center;flex-wrap:wrap;margin-bottom:10px}
.qhead h3{margin:0 0 4px;font-size:16px}.verdict{font-size:13px;color:var(--muted)}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600;color:#fff}
.ok{background:var(--pos)}.bad{background:var(--neg)}.flag{background:var(--neg)}
.lanes{display:grid;grid-template-columns:1fr 1fr;gap:8px 24px}.lanes.stack{grid-template-columns:1fr}
@media(max-width:1000px){.lanes{grid-template-columns:1fr}}
.lane{display:grid;grid-template-columns:76px 1fr;gap:8px;align-items:start;margin:6px 0}
.lane>h4{margin:6px 0 0;font-size:13px}.lane.pos>h4{color:var(--pos)}.lane.neg>h4{color:var(--neg)}
.strip{display:flex;gap:8px;flex-wrap:wrap}
figure.ex{margin:0;width:80px;text-align:center;font-size:11px;color:var(--muted)}
figure.ex img{width:72px;height:72px;image-rendering:pixelated;border:1px solid var(--line);border-radius:6px;
background:#fff;display:block;margin:0 auto 3px}
figure.ex.big{width:auto}figure.ex.big img{width:112px;height:112px}
figure.ex.flagged img{border:2px solid var(--neg)}
figure.ex b{color:var(--ink);font-weight:600}.s-pos{color:var(--pos);font-weight:600}.s-neg{color:var(--neg);font-weight:600}
blockquote.txt{margin:0;padding:8px 10px;border-left:3px solid var(--line);background:#fafbfe;border-radius:4px;
font-size:13px;max-width:100%}blockquote.txt .meta{display:block;color:var(--muted);font-size:11px;margin-top:3px}
.lane.pos blockquote.txt{border-left-color:var(--pos)}.lane.neg blockquote.txt{border-left-color:var(--neg)}
.texts{display:flex;flex-direction:column;gap:6px}.qhead blockquote.txt{font-size:15px;flex:1 1 380px;max-width:560px}
table{border-collapse:collapse;font-size:12.5px;background:var(--card)}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.03em}
td.num{text-align:right;font-variant-numeric:tabular-nums}
details{margin-top:8px}summary{cursor:pointer;color:var(--acc);font-size:12.5px}
.plot{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:10px;display:inline-block;max-width:100%}
.plot img{max-width:100%;display:block}.spark img{width:260px;display:block}
.gallery{display:flex;gap:10px;flex-wrap:wrap;margin-top:12px}
.two{display:grid;grid-template-columns:minmax(0,1fr) minmax(0,1fr);gap:18px}@media(max-width:900px){.two{grid-template-columns:1fr}}
pre{background:#1f2335;color:#e6e8ef;padding:14px;border-radius:10px;overflow:auto;font-size:12px}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:30px}
"""


def _img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img{f" class={cls!r}" if cls else ""} alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
    return "–" if v is None else escape(str(v))


def _score(v: float) -> str:
    return f'<span class="{"s-pos" if v >= 0 else "s-neg"}">{v:+.3g}</span>'


def _example(e: dict, views: dict, caption: str, extra_cls: str = "") -> str:
    """A training or query example as a thumbnail with caption, or as a quoted text."""
    if "text" in e:
        text = e["text"] if len(e["text"]) <= 400 else e["text"][:400] + "…"
        return (f'<blockquote class="txt">{escape(text)}<span class="meta">{caption}</span></blockquote>')
    if "image" in e and e["image"] in views:
        img = _img(plots.image_png(views[e["image"]]), f"example {e['id']}")
        return f'<figure class="ex {extra_cls}">{img}<figcaption>{caption}</figcaption></figure>'
    return f'<figure class="ex {extra_cls}"><figcaption>{caption}</figcaption></figure>'


def _train_caption(e: dict) -> str:
    return f'#{_fmt(e["id"])} · label <b>{_fmt(e["label"])}</b><br>{_score(e["score"])}'


def _lane(kind: str, title: str, examples: list, views: dict) -> str:
    items = "".join(_example(e, views, _train_caption(e)) for e in examples)
    wrap = "texts" if any("text" in e for e in examples) else "strip"
    return f'<div class="lane {kind}"><h4>{title}</h4><div class="{wrap}">{items}</div></div>'


def _topk_table(q: dict) -> str:
    rows = "".join(
        f'<tr><td class="num">{r + 1}</td><td>{_fmt(p["id"])}</td><td>{_fmt(p["label"])}</td>'
        f'<td class="num">{_score(p["score"])}</td><td>{_fmt(o["id"])}</td><td>{_fmt(o["label"])}</td>'
        f'<td class="num">{_score(o["score"])}</td></tr>'
        for r, (p, o) in enumerate(zip(q["proponents"], q["opponents"])))
    head = ("<tr><th>rank</th><th>proponent id</th><th>label</th><th>score</th>"
            "<th>opponent id</th><th>label</th><th>score</th></tr>")
    return f'<details><summary>as a table</summary><table>{head}{rows}</table></details>'


def _query(q: dict, row: np.ndarray, views: dict) -> str:
    correct = q["prediction"] is not None and q["label"] is not None and q["prediction"] == q["label"]
    badge = "" if q["prediction"] is None or q["label"] is None else \
        f'<span class="badge {"ok" if correct else "bad"}">{"correct" if correct else "wrong"}</span>'
    caption = f'query #{_fmt(q["id"])}'
    verdict = f'true label <b>{_fmt(q["label"])}</b> · predicted <b>{_fmt(q["prediction"])}</b> {badge}'
    texts = any("text" in e for e in q["proponents"] + q["opponents"])
    spark = f'<div class="spark">{_img(plots.query_scores_png(row), "score distribution")}</div>'
    head = (f'<div class="qhead">{_example(q, views, caption, "big")}<div><h3>{caption}</h3>'
            f'<div class="verdict">{verdict}</div></div>{spark}</div>')
    return (f'<article class="query">{head}'
            + f'<div class="lanes{" stack" if texts else ""}">'
            + _lane("pos", "Proponents<br><small>helped most</small>", q["proponents"], views)
            + _lane("neg", "Opponents<br><small>hurt most</small>", q["opponents"], views)
            + "</div>" + _topk_table(q) + "</article>")


def _cards(s: dict) -> str:
    a = s.get("attributor", {})
    solver, curv = a.get("solver", {}), a.get("curvature", {})
    total = sum(st["seconds"] for st in s.get("stages", []))
    peak = max((st.get("peak_mb") or 0 for st in s.get("stages", [])), default=0)
    items = [(f'{s["n_train"]:,}', "training examples"), (f'{s["n_query"]:,}', "queries"),
             (f'{a.get("n_params", 0):,}', "parameters attributed"),
             (escape(str(curv.get("curvature", curv.get("name", "–")))), "curvature"),
             (escape(str(solver.get("name", "–"))), "solver"), (f'{a.get("damping", 0):.3g}', "damping λ"),
             (f"{total:.1f} s", "total time"), (f"{peak:,.0f} MB" if peak else "–", "peak memory")]
    return '<div class="cards">' + "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>'
                                           for v, k in items) + "</div>"


def _gallery(s: dict, rec: Record) -> str:
    flagged = s.get("flagged")
    positions = flagged.get("positions") if flagged else None
    gal = s["gallery"]
    threshold = gal[-1]["score"] if gal else None
    hist = _img(plots.self_influence_png(rec.self_influence.numpy(), threshold, positions), "self-influence histogram")
    note = ("Self-influence gᵢᵀ(H + λI)⁻¹gᵢ is how much a training example supports its own label. "
            "The highest are unusual examples, ambiguous ones, or wrong labels: look at these first.")
    if flagged and "auc" in flagged:
        note += (f' {flagged["count"]} examples are flagged (red border); self-influence ranks them with '
                 f'ROC-AUC {flagged["auc"]:.3f} and finds {100 * flagged["found_top10pct"]:.0f} % of them '
                 "in its top 10 %.")
    cards = "".join(_example(e, rec.views, f'#{_fmt(e["id"])} · label <b>{_fmt(e["label"])}</b><br>{e["score"]:.3g}'
                             + (' <span class="badge flag">flagged</span>' if e.get("flagged") else ""),
                             "flagged" if e.get("flagged") else "") for e in gal)
    wrap = "texts" if any("text" in e for e in gal) else "gallery"
    return (f'<section id="mislabels"><h2>Likely mislabels: highest self-influence</h2><p class="note">{note}</p>'
            f'<div class="plot">{hist}</div><div class="{wrap}">{cards}</div></section>')


def _spectrum(s: dict) -> str:
    sp = s.get("spectrum")
    if not sp:
        return ""
    e = sp["eigenvalues"]
    note = (f'{len(e)} eigenvalues of the curvature kept by the {escape(sp["solver"])} solver, from '
            f'{max(map(abs, e)):.3g} down to {min(map(abs, e)):.3g}; directions below the damping λ = '
            f'{sp["damping"]:.3g} barely matter to the scores.')
    return (f'<section id="spectrum"><h2>Curvature spectrum</h2><p class="note">{note}</p>'
            f'<div class="plot">{_img(plots.spectrum_png(e, sp["damping"]), "curvature spectrum")}</div></section>')


def _stages(s: dict) -> str:
    stages = s.get("stages", [])
    if not stages:
        return ""
    rows = "".join(f'<tr><td>{escape(st["name"])}</td><td class="num">{st["seconds"]:.2f}</td>'
                   f'<td class="num">{"–" if st.get("peak_mb") is None else format(st["peak_mb"], ",.0f")}</td>'
                   f'<td>{escape(st.get("detail", ""))}</td></tr>' for st in stages)
    table = ('<table><tr><th>stage</th><th>seconds</th><th>peak memory (MB)</th><th>detail</th></tr>'
             f'{rows}</table>')
    short = [st["name"].split(" (")[0].split(":")[0][:30] for st in stages]
    chart = _img(plots.stages_png(short, [st["seconds"] for st in stages]), "timings")
    note = escape(s.get("memory_note", "peak resident memory of the process during each stage"))
    return (f'<section id="timings"><h2>Timings and memory</h2><p class="note">{note}</p>'
            f'<div class="two"><div>{table}</div><div class="plot">{chart}</div></div></section>')


def _config(s: dict) -> str:
    config = s.get("config_text") or json.dumps(s.get("config", {}), indent=1, default=str)
    attributor = json.dumps(s.get("attributor", {}), indent=1, default=str)
    versions = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>"
                       for k, v in s.get("versions", {}).items())
    return (f'<section id="config"><h2>Configuration</h2><div class="two"><div><pre>{escape(config)}</pre></div>'
            f'<div><table><tr><th>package</th><th>version</th></tr>{versions}</table></div></div>'
            f'<details><summary>what the attributor did</summary><pre>{escape(attributor)}</pre></details></section>')


def render(rec: Record) -> str:
    """The report for one record as an HTML string."""
    s = rec.summary
    scores = rec.scores.numpy()
    shown = [q for q in s["queries"] if q.get("shown", True)]
    queries = "".join(_query(q, scores[q["position"]], rec.views) for q in shown)
    more = len(s["queries"]) - len(shown)
    more_note = f" {more} more queries are in topk.json." if more > 0 else ""
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (("queries", "Queries"), ("mislabels", "Likely mislabels"),
                  ("spectrum", "Spectrum"), ("timings", "Timings"), ("config", "Configuration"))
                  if a != "spectrum" or s.get("spectrum"))
    sub = f'{s["n_query"]} queries × {s["n_train"]:,} training examples'
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(s["title"])}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><style>{CSS}</style></head><body>'
            f'<header><div class="in"><h1>{escape(s["title"])}</h1><p>{sub}: which training examples made the model '
            f'do this?</p><nav>{nav}</nav></div></header><main>{_cards(s)}'
            f'<section id="queries"><h2>Queries</h2><p class="note">Score = g_qᵀ(H + λI)⁻¹gᵢ. Positive means helpful: '
            f'removing the training example is predicted to raise the query\'s loss by about score / n '
            f'(n = {s["n_train"]:,}).{more_note}</p>{queries}</section>'
            f'{_gallery(s, rec)}{_spectrum(s)}{_stages(s)}{_config(s)}'
            f'<footer>influent {escape(str(s.get("versions", {}).get("influent", "")))} · '
            f'self-contained report: no scripts, nothing loaded from a network</footer></main></body></html>')


def write_report(out_dir: str | Path) -> Path:
    """(Re)build report.html in a run's output folder from its saved record; returns its path."""
    out = Path(out_dir)
    path = out / REPORT
    path.write_text(render(Record.load(out)), encoding="utf-8")
    return path
