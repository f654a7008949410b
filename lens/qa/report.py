"""The QA report people look at: failures first, then the most extreme corrections as
before/after thumbnails with straight reference lines drawn over them, so a bent or
over-corrected line shows against a ruler. One self-contained HTML file (images inlined)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import cv2
import numpy as np

from lens.qa.gates import QAReport
from lens.runtime.io import ImageReadError, read_image

THUMB_WIDTH = 360
MAX_EXTREMES = 24
RULER_LINES = 6


def _thumb_data_uri(path: str | Path) -> str | None:
    try:
        pixels = read_image(path).pixels
    except ImageReadError:
        return None
    rgb = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else np.ascontiguousarray(pixels[..., :3])
    h, w = rgb.shape[:2]
    thumb = cv2.resize(rgb, (THUMB_WIDTH, max(2, round(h * THUMB_WIDTH / w))), interpolation=cv2.INTER_AREA)
    th, tw = thumb.shape[:2]
    overlay = thumb.copy()
    for i in range(1, RULER_LINES):
        x, y = round(tw * i / RULER_LINES), round(th * i / RULER_LINES)
        cv2.line(overlay, (x, 0), (x, th - 1), (0, 255, 255), 1)
        cv2.line(overlay, (0, y), (tw - 1, y), (0, 255, 255), 1)
    thumb = cv2.addWeighted(overlay, 0.6, thumb, 0.4, 0)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(thumb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def _img(uri: str | None, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}" width="{THUMB_WIDTH}">' if uri else f"<div class=missing>{html.escape(alt)}: not decodable</div>"


def render_html(report: QAReport, pred_dir: str | Path) -> str:
    pred_dir = Path(pred_dir)
    status = "PASSED" if report.passed else "FAILED"
    rows = "".join(
        f"<tr><td>{html.escape(f['gate'])}</td><td>{html.escape(f['file'])}</td><td>{html.escape(f['reason'])}</td></tr>" for f in report.failures()
    )
    gates = "".join(f"<li class={'ok' if g.passed else 'bad'}>{html.escape(g.name)}: {'pass' if g.passed else f'{len(g.files)} file(s)'}{f' ({html.escape(g.note)})' if g.note else ''}</li>" for g in report.gates)
    cards = []
    for e in report.extremes[:MAX_EXTREMES]:
        label = f"{e['file']} — mean change {e['change']:.1f} grey levels" + (f", up to {e['max_displacement_px']:.1f} px" if "max_displacement_px" in e else "")
        cards.append(
            f"<div class=card><h3>{html.escape(label)}</h3><div class=pair>"
            f"<figure>{_img(_thumb_data_uri(e['input']), 'before')}<figcaption>before</figcaption></figure>"
            f"<figure>{_img(_thumb_data_uri(pred_dir / e['file']), 'after')}<figcaption>after</figcaption></figure></div></div>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lens QA: {status}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}} .ok{{color:#1a7f37}} .bad{{color:#cf222e;font-weight:bold}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
.card{{margin:1em 0}} .pair{{display:flex;gap:12px}} figure{{margin:0}} .missing{{width:{THUMB_WIDTH}px;background:#eee;padding:2em 0;text-align:center}}
</style></head><body>
<h1>lens QA: <span class={'ok' if report.passed else 'bad'}>{status}</span></h1>
<p>{html.escape(str(pred_dir))}: {report.checked_files} of {report.expected_ids} expected images checked.</p>
<ul>{gates}</ul>
<h2>Failures ({len(report.failures())})</h2>
{'<table><tr><th>gate</th><th>file</th><th>reason</th></tr>' + rows + '</table>' if rows else '<p>none</p>'}
<h2>Most extreme corrections</h2>
<p>Yellow lines are straight: lines in the scene that should be straight should follow them after correction.</p>
{''.join(cards) or '<p>none</p>'}
</body></html>
"""
