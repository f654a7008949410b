"""Procedural photographs rich in straight lines: rooms, facades, tiles, shelving.

Straight lines are what tell a lens's distortion apart, and the target workload is interior and
real-estate photography, so training data is dominated by such scenes. Each scene is drawn flat
with OpenCV, seen through a random homography (lines stay straight), then given photographic
texture, lighting, blur, sensor noise and JPEG artefacts. Everything is a function of the
seed: the same seed gives the same image on any machine.
"""
from __future__ import annotations

import cv2
import numpy as np

SCENE_KINDS = ("room", "facade", "tiles", "shelving")


def _color(rng: np.random.Generator, lo: int = 30, hi: int = 230) -> tuple[int, int, int]:
    base = rng.integers(lo, hi)
    tint = rng.integers(-40, 41, size=3)
    return tuple(int(np.clip(base + t, 0, 255)) for t in tint)


def _texture(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    """Multiplicative low-frequency texture (plaster, wood, paper) around 1.0."""
    out = np.zeros((h, w), np.float32)
    for cells in (4, 16, 64):
        small = rng.standard_normal((max(2, cells * h // w), cells)).astype(np.float32)
        out += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / cells**0.5
    return 1.0 + strength * out


def _window(img, rng, x0, y0, x1, y1):
    frame, glass = _color(rng, 150, 255), _color(rng, 20, 120)
    cv2.rectangle(img, (x0, y0), (x1, y1), frame, -1)
    t = max(2, (x1 - x0) // 14)
    cv2.rectangle(img, (x0 + t, y0 + t), (x1 - t, y1 - t), glass, -1)
    cols, rows = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    for i in range(1, cols):
        x = x0 + (x1 - x0) * i // cols
        cv2.line(img, (x, y0), (x, y1), frame, max(1, t // 2))
    for j in range(1, rows):
        y = y0 + (y1 - y0) * j // rows
        cv2.line(img, (x0, y), (x1, y), frame, max(1, t // 2))


def _room(rng, h, w):
    img = np.zeros((h, w, 3), np.uint8)
    vx, vy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.6)
    bw, bh = w * rng.uniform(0.3, 0.55), h * rng.uniform(0.3, 0.55)
    bx0, by0, bx1, by1 = int(vx - bw / 2), int(vy - bh / 2), int(vx + bw / 2), int(vy + bh / 2)
    corners = [(0, 0), (w - 1, 0), (w - 1, h - 1), (0, h - 1)]
    back = [(bx0, by0), (bx1, by0), (bx1, by1), (bx0, by1)]
    for i in range(4):  # ceiling, right wall, floor, left wall
        poly = np.array([corners[i], corners[(i + 1) % 4], back[(i + 1) % 4], back[i]], np.int32)
        cv2.fillConvexPoly(img, poly, _color(rng))
    cv2.rectangle(img, (bx0, by0), (bx1, by1), _color(rng, 120, 250), -1)
    line = _color(rng, 0, 80)
    for i in range(4):
        cv2.line(img, corners[i], back[i], line, 2, cv2.LINE_AA)
    for k in range(int(rng.integers(4, 14))):  # floor boards converging to the vanishing point
        t = (k + 1) / 15
        x = int(t * (w - 1))
        cv2.line(img, (x, h - 1), (int(bx0 + t * (bx1 - bx0)), by1), line, 1, cv2.LINE_AA)
    for _ in range(int(rng.integers(1, 4))):  # windows / doors / frames on the back wall
        ww, wh = bw * rng.uniform(0.15, 0.35), bh * rng.uniform(0.3, 0.7)
        x0 = int(rng.uniform(bx0, bx1 - ww))
        y0 = int(rng.uniform(by0, by1 - wh))
        _window(img, rng, x0, y0, int(x0 + ww), int(y0 + wh))
    return img


def _facade(rng, h, w):
    img = np.full((h, w, 3), _color(rng), np.uint8)
    rows, cols = int(rng.integers(2, 7)), int(rng.integers(3, 10))
    mx, my = rng.uniform(0.02, 0.1), rng.uniform(0.02, 0.1)
    for j in range(rows):
        y0 = int(h * (my + (1 - 2 * my) * j / rows))
        y1 = int(h * (my + (1 - 2 * my) * (j + rng.uniform(0.5, 0.8)) / rows))
        cv2.line(img, (0, y1 + 3), (w - 1, y1 + 3), _color(rng, 0, 120), int(rng.integers(1, 5)))
        for i in range(cols):
            x0 = int(w * (mx + (1 - 2 * mx) * i / cols))
            x1 = int(w * (mx + (1 - 2 * mx) * (i + rng.uniform(0.4, 0.8)) / cols))
            _window(img, rng, x0, y0, x1, y1)
    return img


def _tiles(rng, h, w):
    img = np.full((h, w, 3), _color(rng, 60, 200), np.uint8)
    size = int(rng.integers(max(8, w // 40), max(12, w // 8)))
    grout = _color(rng, 0, 255)
    alt = _color(rng, 40, 220)
    for y in range(0, h, size):
        for x in range(0, w, size):
            if ((x // size) + (y // size)) % 2 and rng.random() < 0.6:
                cv2.rectangle(img, (x, y), (x + size, y + size), alt, -1)
    for y in range(0, h, size):
        cv2.line(img, (0, y), (w - 1, y), grout, max(1, size // 12))
    for x in range(0, w, size):
        cv2.line(img, (x, 0), (x, h - 1), grout, max(1, size // 12))
    return img


def _shelving(rng, h, w):
    img = np.full((h, w, 3), _color(rng, 80, 220), np.uint8)
    board = _color(rng, 40, 200)
    y = int(h * rng.uniform(0.02, 0.1))
    while y < h:
        gap = int(h * rng.uniform(0.12, 0.3))
        cv2.rectangle(img, (0, y), (w - 1, y + max(3, h // 60)), board, -1)
        x = 0
        while x < w:  # books: vertical edges
            bw = int(rng.integers(max(3, w // 120), max(6, w // 25)))
            top = y - int(gap * rng.uniform(0.5, 0.95))
            cv2.rectangle(img, (x, top), (x + bw, y), _color(rng), -1)
            x += bw + int(rng.integers(0, 3))
        y += gap
    for x in (int(w * rng.uniform(0.0, 0.1)), int(w * rng.uniform(0.9, 1.0))):
        cv2.rectangle(img, (x - w // 80, 0), (x + w // 80, h - 1), board, -1)
    return img


_DRAW = {"room": _room, "facade": _facade, "tiles": _tiles, "shelving": _shelving}


def _random_homography(rng: np.random.Generator, h: int, w: int, strength: float) -> np.ndarray:
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jitter = rng.uniform(-strength, strength, size=(4, 2)) * np.float32([w, h])
    return cv2.getPerspectiveTransform(src, (src + jitter).astype(np.float32))


def render_scene(seed: int, height: int, width: int, kind: str | None = None) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB scene; same seed, same pixels."""
    rng = np.random.default_rng(seed)
    kind = kind or SCENE_KINDS[int(rng.integers(len(SCENE_KINDS)))]
    # Draw 1.5x larger and crop after the homography, so no empty corners show.
    big_h, big_w = int(height * 1.5), int(width * 1.5)
    flat = _DRAW[kind](rng, big_h, big_w)
    H = _random_homography(rng, big_h, big_w, 0.08 if kind == "room" else 0.15)
    warped = cv2.warpPerspective(flat, H, (big_w, big_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    y0, x0 = (big_h - height) // 2, (big_w - width) // 2
    img = warped[y0 : y0 + height, x0 : x0 + width].astype(np.float32)
    light = np.linspace(rng.uniform(0.6, 1.0), rng.uniform(0.8, 1.2), width, dtype=np.float32)[None, :, None]
    img = img * _texture(rng, height, width, rng.uniform(0.02, 0.12))[..., None] * light
    sigma = rng.uniform(0.0, 1.2)
    if sigma > 0.3:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    img += rng.normal(0, rng.uniform(0.5, 4.0), img.shape).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(60, 96))])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
