"""Drawing a product: the garment's outline, pattern and details on a light background, supersampled."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fbcompress.data.synth.attributes import colour_distance
from fbcompress.data.synth.vocabulary import (
    COLOURS,
    HAIR_COLOURS,
    MODEL_SHARE,
    PATTERN_COLOURS,
    RGB,
    SKIN_TONES,
    Point,
    Subcategory,
)


@dataclass
class _Sketch:
    """Primitives in garment units (origin at the neck or waist, y down), placed on the canvas at render time.

    The layout needs the bounding box of everything (model regions included) before drawing, hence this
    two-step: describe in units, then fit and render.
    """

    items: list[tuple[str, tuple]] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)

    def _add(self, kind: str, *data: Any, pts: list[Point]) -> None:
        self.items.append((kind, data))
        self.points.extend(pts)

    def garment(self, pts: list[Point]) -> None:
        self._add("garment", pts, pts=pts)

    def shade(self, pts: list[Point], factor: float) -> None:
        self._add("shade", pts, factor, pts=pts)

    def solid(self, pts: list[Point], rgb: RGB) -> None:
        self._add("solid", pts, rgb, pts=pts)

    def seam(self, pts: list[Point]) -> None:
        self._add("seam", pts, pts=[])

    def pocket(self, cx: float, cy: float, w: float, h: float, flap: bool = False) -> None:
        self._add("pocket", (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), flap, pts=[])

    def buttons(self, pts: list[Point], r: float) -> None:
        self._add("buttons", pts, r, pts=[])

    def zip(self, pts: list[Point], tab: bool = True) -> None:
        self._add("zip", pts, tab, pts=[])

    def logo(self, cx: float, cy: float, side: float) -> None:
        self._add("logo", (cx, cy), side, pts=[])

    def laces(self, pairs: list[tuple[Point, Point]]) -> None:
        self._add("laces", pairs, pts=[])

    def handle(self, box: tuple[float, float, float, float], width: float) -> None:
        self._add("handle", box, width, pts=[(box[0], box[1]), (box[2], box[3])])

    def skin_ellipse(self, cx: float, cy: float, rx: float, ry: float) -> None:
        corners = [(cx - rx, cy - ry), (cx + rx, cy + ry)]
        self._add("skin_ellipse", (cx - rx, cy - ry, cx + rx, cy + ry), pts=corners)

    def skin_limb(self, a: Point, b: Point, width: float) -> None:
        h = width / 2
        corners = [(p[0] + dx, p[1] + dy) for p in (a, b) for dx in (-h, h) for dy in (-h, h)]
        self._add("skin_limb", a, b, width, pts=corners)

    def hair(self, cx: float, cy: float, rx: float, ry: float) -> None:
        self._add("hair", (cx - rx, cy - ry, cx + rx, cy + ry), pts=[(cx - rx, cy - ry), (cx + rx, cy + ry)])


def _mirror(pts: list[Point]) -> list[Point]:
    return [(-x, y) for x, y in reversed(pts)]


def _head(sk: _Sketch) -> None:
    """A head and neck above the neckline: an irrelevant region the text never mentions."""
    sk.skin_limb((0.0, -0.2), (0.0, 0.06), 0.13)
    sk.skin_ellipse(0.0, -0.33, 0.16, 0.2)
    sk.hair(0.0, -0.38, 0.18, 0.17)


def _sleeves(sk: _Sketch, sw: float, sleeve: str, model: bool) -> None:
    """Draw sleeves and, on a model, arms and hands (drawn first, so the sleeves cover the upper arms)."""
    if model:
        if sleeve == "long":
            for s in (1, -1):
                sk.skin_ellipse(s * (sw + 0.22), 1.1, 0.075, 0.085)
        else:
            for s in (1, -1):
                sk.skin_limb((s * (sw + 0.05), 0.2), (s * (sw + 0.2), 1.02), 0.11)
                sk.skin_ellipse(s * (sw + 0.21), 1.09, 0.075, 0.085)
    if sleeve == "short":
        right = [(sw, 0.08), (sw + 0.32, 0.36), (sw + 0.18, 0.5), (sw, 0.38)]
    elif sleeve == "long":
        right = [(sw, 0.08), (sw + 0.34, 1.0), (sw + 0.12, 1.04), (sw, 0.4)]
    else:
        return
    sk.garment(right)
    sk.garment(_mirror(right))


def _neckline(sk: _Sketch, kind: str, nw: float, depth: float = 0.22) -> float:
    """Draw the neck opening; return how far down it reaches (closures start below it)."""
    if kind == "round":
        pts = [(nw * math.cos(t), 0.11 * math.sin(t)) for t in np.linspace(0, math.pi, 9)]
        sk.shade([(nw, 0.0), *pts[1:-1], (-nw, 0.0)], 0.55)
        return 0.11
    if kind == "v-neck":
        sk.shade([(-nw, 0.0), (nw, 0.0), (0.0, 0.34)], 0.55)
        return 0.34
    # collar: two flaps over a dark inner triangle
    sk.shade([(-nw, 0.0), (nw, 0.0), (0.0, depth * 0.55)], 0.5)
    left = [(-nw - 0.04, -0.05), (0.0, depth * 0.55), (-0.06, depth), (-nw - 0.1, depth * 0.75)]
    sk.shade(left, 1.25)
    sk.shade(_mirror(left), 1.25)
    return depth * 0.6


def _draw_top(sk: _Sketch, sub: Subcategory, a: dict[str, Any], model: bool) -> None:
    """T-shirts, shirts, sweaters, jackets and coats: a torso with sleeves, neckline and front details."""
    sw, nw, length, hem = {
        "t-shirt": (0.5, 0.16, 1.1, 0.5), "shirt": (0.5, 0.15, 1.2, 0.5), "sweater": (0.52, 0.16, 1.05, 0.48),
        "jacket": (0.55, 0.17, 1.12, 0.56), "coat": (0.55, 0.17, 2.0, 0.68),
    }[sub.name]
    if model:
        _head(sk)
    sleeve = a["sleeve"]
    _sleeves(sk, sw, sleeve, model)
    if sleeve == "sleeveless":
        right = [(nw, 0.0), (sw * 0.72, 0.04), (sw * 0.84, 0.24), (sw, 0.4), (hem, length)]
    else:
        right = [(nw, 0.0), (sw, 0.08), (sw * 0.98, 0.42), (hem, length)]
    sk.garment(_mirror(right) + right)
    if sub.name == "sweater":
        sk.shade([(-hem, length - 0.09), (hem, length - 0.09), (hem, length), (-hem, length)], 0.8)
        for s in (1, -1):
            cuff = [(sw + 0.31, 0.92), (sw + 0.34, 1.0), (sw + 0.12, 1.04), (sw + 0.11, 0.96)]
            sk.shade(cuff if s > 0 else _mirror(cuff), 0.8)
    depth = 0.36 if sub.category == "outerwear" else 0.22
    bottom = _neckline(sk, a["neckline"], nw, depth)
    closure = a.get("closure", "none")
    if sub.category == "outerwear":
        sk.seam([(0.0, bottom), (0.0, length)])
    if closure == "buttons":
        if sub.name == "shirt":
            sk.seam([(0.0, bottom), (0.0, length)])
            ys = np.arange(bottom + 0.1, length - 0.05, 0.17)
            sk.buttons([(0.0, float(y)) for y in ys], 0.035)
        else:
            ys = np.linspace(bottom + 0.12, length - 0.2, 4 if sub.name == "jacket" else 5)
            sk.buttons([(0.05, float(y)) for y in ys], 0.045)
    elif closure == "zip":
        if sub.name == "sweater":  # a quarter zip from the neck
            sk.zip([(0.0, 0.0), (0.0, 0.45)])
        else:
            sk.zip([(0.0, bottom), (0.0, length)])
    pockets = a.get("pockets", 0)
    if sub.pocket_where == "chest" and pockets:
        xs = [-0.25] if pockets == 1 else [-0.25, 0.25]
        for x in xs:
            sk.pocket(x, 0.4, 0.2, 0.22)
    elif sub.pocket_where == "waist" and pockets:
        y = length - (0.33 if sub.name == "jacket" else 0.55)
        for x in (-0.3, 0.3):
            sk.pocket(x, y, 0.26, 0.22, flap=True)
    if a.get("logo"):
        if sub.logo_where == "sleeve":
            if sleeve == "long":
                sk.logo(sw + 0.1, 0.5, 0.1)
            else:
                sk.logo(sw + 0.15, 0.3, 0.1)
        else:
            sk.logo(0.27, 0.3, 0.11)


def _draw_dress(sk: _Sketch, sub: Subcategory, a: dict[str, Any], model: bool) -> None:
    """A fitted bodice flaring from the waist to a hem whose height shows the length."""
    sw, nw, ws = 0.44, 0.16, 0.34
    length, hw = {"mini": (1.15, 0.6), "midi": (1.7, 0.68), "maxi": (2.25, 0.78)}[a["length"]]
    if model:
        _head(sk)
        for s in (1, -1):
            sk.skin_limb((s * 0.18, length - 0.2), (s * 0.18, max(length + 0.18, 2.0)), 0.13)
    sleeve = a["sleeve"]
    _sleeves(sk, sw, sleeve, model)
    if sleeve == "sleeveless":
        right = [(nw, 0.0), (sw * 0.7, 0.04), (sw * 0.84, 0.24), (sw - 0.02, 0.38)]
    else:
        right = [(nw, 0.0), (sw, 0.08), (sw - 0.02, 0.38)]
    right += [(ws, 0.58), (hw, length)]
    hem = [(hw * math.cos(t), length + 0.04 * math.sin(t)) for t in np.linspace(0, math.pi, 7)][1:-1]
    sk.garment(_mirror(right) + right + hem)
    sk.seam([(-ws, 0.58), (ws, 0.58)])
    bottom = _neckline(sk, a["neckline"], nw)
    if a["closure"] == "buttons":
        ys = np.arange(bottom + 0.07, 0.56, 0.12)
        sk.buttons([(0.0, float(y)) for y in ys], 0.035)
    elif a["closure"] == "zip":
        sk.zip([(0.0, bottom), (0.0, 0.62)])
    if a["pockets"]:
        for x in (-0.26, 0.26):
            sk.pocket(x, 0.8, 0.18, 0.17)


def _draw_bottom(sk: _Sketch, sub: Subcategory, a: dict[str, Any], model: bool) -> None:
    """Trousers, skirts and shorts, from the waistband down; on a model, legs or feet below the hem."""
    closure = a["closure"]
    if sub.name == "skirt":
        length, hw = {"mini": (0.6, 0.5), "midi": (1.1, 0.58), "maxi": (1.6, 0.64)}[a["length"]]
        if model:
            for s in (1, -1):
                sk.skin_limb((s * 0.16, length - 0.2), (s * 0.16, length + 0.45), 0.13)
                sk.skin_ellipse(s * 0.19, length + 0.5, 0.09, 0.05)
        hem = [(hw * math.cos(t), length + 0.04 * math.sin(t)) for t in np.linspace(0, math.pi, 7)]
        sk.garment([(-0.36, 0.0), (0.36, 0.0), *hem])
        sk.shade([(-0.36, 0.0), (0.36, 0.0), (0.365, 0.09), (-0.365, 0.09)], 0.75)
        if closure == "buttons":
            sk.seam([(0.0, 0.09), (0.0, length)])
            ys = np.arange(0.17, length - 0.04, 0.13)
            sk.buttons([(0.0, float(y)) for y in ys], 0.035)
        if a["pockets"]:
            for x in (-0.22, 0.22):
                sk.pocket(x, 0.25, 0.17, 0.16)
        if a["logo"]:
            sk.logo(hw * 0.6, length - 0.1, 0.1)
        return
    shorts = sub.name == "shorts"
    if shorts:
        length, outer, inner = 0.68, 0.52, 0.06
    else:
        cropped = a["length"] == "cropped"
        length, outer, inner = (1.45, 0.4, 0.12) if cropped else (1.95, 0.42, 0.1)
    if model:
        for s in (1, -1):
            x = s * (outer + inner) / 2
            if shorts:
                sk.skin_limb((x, length - 0.15), (x, length + 0.55), 0.14)
                sk.skin_ellipse(x + s * 0.03, length + 0.6, 0.1, 0.05)
            else:
                drop = 0.16 if cropped else 0.03
                sk.skin_limb((x, length - 0.1), (x, length + drop), 0.12)
                sk.skin_ellipse(x + s * 0.03, length + drop + 0.04, 0.1, 0.05)
    right = [(0.4, 0.0), (0.47, 0.33), (outer, length), (inner, length), (0.0, 0.5 if shorts else 0.56)]
    sk.garment([(-0.4, 0.0), *right, *[(-x, y) for x, y in right[1:-1][::-1]]])
    sk.shade([(-0.4, 0.0), (0.4, 0.0), (0.405, 0.1), (-0.405, 0.1)], 0.75)
    if not shorts and cropped:
        for s in (1, -1):
            cuff = [(outer + 0.005, length - 0.1), (inner - 0.005, length - 0.1), (inner, length),
                    (outer, length)]
            sk.shade([(s * x, y) for x, y in cuff], 0.75)
    sk.seam([(0.0, 0.1), (0.0, 0.44)])
    if closure == "buttons":
        sk.buttons([(0.0, 0.05)], 0.06)
    elif closure == "zip":
        sk.zip([(0.0, 0.06), (0.0, 0.42)])
    if a["pockets"]:
        for x in (-0.24, 0.24):
            sk.pocket(x, 0.24, 0.19, 0.17)
    if a["logo"]:
        if shorts:
            sk.logo(0.28, length - 0.12, 0.1)
        else:
            sk.logo(0.26, 0.55, 0.1)


def _draw_shoe(sk: _Sketch, sub: Subcategory, a: dict[str, Any], model: bool) -> None:
    """One shoe in side view, toe to the right; the shaft height shows the length."""
    height = a["length"]
    if sub.name == "sneakers":
        top = 0.28 if height == "low-top" else -0.02
        if model:
            sk.skin_limb((-0.3, top + 0.08), (-0.26, min(top, 0.0) - 0.5), 0.24)
        upper = [(-0.5, 0.64), (-0.5, top + 0.04), (-0.44, top), (-0.16, top + 0.02), (-0.1, 0.3), (0.2, 0.4),
                 (0.42, 0.48), (0.52, 0.58), (0.52, 0.64)]
        sk.garment(upper)
        sk.shade([(-0.44, top), (-0.16, top + 0.02), (-0.18, top + 0.07), (-0.43, top + 0.05)], 0.45)
        sk.solid([(-0.53, 0.62), (0.54, 0.62), (0.55, 0.7), (0.5, 0.75), (-0.52, 0.75), (-0.55, 0.7)],
                 (244, 242, 236))
        lace_top = top + 0.06
        steps = 4 if height == "low-top" else 6
        pairs = []
        for i in range(steps):
            t = (i + 0.5) / steps
            x = -0.14 + t * 0.34 if height == "low-top" else -0.16 + t * 0.36
            y = (0.31 + t * 0.09) if height == "low-top" else lace_top + t * (0.4 - lace_top)
            pairs.append(((x - 0.05, y - 0.05), (x + 0.05, y + 0.05)))
        sk.laces(pairs)
        if a["logo"]:
            sk.logo(-0.2, 0.5, 0.12)
        return
    top = 0.05 if height == "ankle" else -0.8
    if model:
        sk.skin_limb((-0.27, top + 0.1), (-0.24, top - 0.45), 0.26)
    sk.garment([(-0.47, 0.66), (-0.45, top), (-0.07, top), (-0.06, 0.32), (0.22, 0.42), (0.46, 0.52),
                (0.5, 0.66)])
    sole = [(-0.48, 0.64), (0.52, 0.64), (0.52, 0.72), (-0.12, 0.72), (-0.16, 0.78), (-0.46, 0.78)]
    sk.solid(sole, (52, 40, 34))
    if a["closure"] == "zip":
        sk.zip([(-0.17, top + 0.03), (-0.17, 0.56)])
    if a["logo"]:
        sk.logo(-0.34, 0.5, 0.11)


def _draw_bag(sk: _Sketch, sub: Subcategory, a: dict[str, Any], model: bool) -> None:
    """A tote (trapezoid with a handle loop) or a backpack (rounded body, straps, top handle)."""
    closure = a["closure"]
    if sub.name == "tote":
        if model:
            sk.skin_limb((0.03, 0.03), (0.08, -0.45), 0.12)
            sk.skin_ellipse(0.0, 0.03, 0.08, 0.07)
        sk.handle((-0.28, 0.02, 0.28, 0.7), 0.06)
        sk.garment([(-0.52, 0.36), (0.52, 0.36), (0.45, 1.2), (-0.45, 1.2)])
        if closure == "zip":
            sk.zip([(-0.4, 0.43), (0.4, 0.43)], tab=False)
        elif closure == "buttons":
            sk.shade([(-0.07, 0.32), (0.07, 0.32), (0.07, 0.52), (-0.07, 0.52)], 0.75)
            sk.buttons([(0.0, 0.47)], 0.045)
        if a["pockets"]:
            sk.pocket(0.0, 0.88, 0.44, 0.3)
        if a["logo"]:
            sk.logo(0.3, 0.6, 0.11)
        return
    if model:
        sk.skin_limb((0.03, 0.07), (0.08, -0.4), 0.12)
        sk.skin_ellipse(0.0, 0.07, 0.08, 0.07)
    sk.handle((-0.13, 0.05, 0.13, 0.35), 0.05)
    for s in (1, -1):
        sk.shade([(s * 0.42, 0.3), (s * 0.53, 0.32), (s * 0.53, 1.12), (s * 0.42, 1.1)], 0.6)
    arc = [(0.45 * math.cos(t), 0.45 - 0.3 * math.sin(t)) for t in np.linspace(0, math.pi, 11)]
    sk.garment([*arc, (-0.45, 1.2), (0.45, 1.2)])
    if closure == "zip":
        sk.zip([(0.37 * math.cos(t), 0.5 - 0.27 * math.sin(t)) for t in np.linspace(0.1, math.pi - 0.1, 11)],
               tab=False)
    else:
        flap = [(0.45 * math.cos(t), 0.45 - 0.3 * math.sin(t)) for t in np.linspace(0, math.pi, 11)]
        sk.shade([*flap, (-0.45, 0.56), (0.45, 0.56)], 0.8)
        sk.buttons([(0.0, 0.5)], 0.05)
    if a["pockets"]:
        sk.pocket(0.0, 0.92, 0.56, 0.34)
    if a["logo"]:
        sk.logo(0.3, 0.66, 0.1)


_DRAWERS = {"tops": _draw_top, "outerwear": _draw_top, "dresses": _draw_dress, "bottoms": _draw_bottom,
            "shoes": _draw_shoe, "bags": _draw_bag}


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _pattern_image(size: int, primary: RGB, pattern: str, secondary: RGB | None,
                   rng: random.Random) -> Image.Image:
    """A full-canvas fill of the pattern; periods are fractions of the canvas (~7-11 px at 64 px)."""
    if pattern == "solid" or secondary is None:
        return Image.new("RGB", (size, size), primary)
    yy, xx = _grid(size)
    oy, ox = rng.random() * size, rng.random() * size
    out = np.empty((size, size, 3), np.uint8)
    out[:] = primary
    if pattern == "stripes":
        p = size / 9.0
        out[((yy + oy) % p) < 0.45 * p] = secondary
    elif pattern == "checks":
        p = size / 7.5
        h = ((yy + oy) % p) < 0.36 * p
        v = ((xx + ox) % p) < 0.36 * p
        mixed = tuple(int(0.45 * c + 0.55 * s) for c, s in zip(primary, secondary, strict=True))
        out[h | v] = mixed
        out[h & v] = secondary
    else:
        p = size / (8.0 if pattern == "dots" else 5.2)
        row = np.floor((yy + oy) / p)
        dx = ((xx + ox + (row % 2) * p / 2) % p) - p / 2
        dy = ((yy + oy) % p) - p / 2
        if pattern == "dots":
            out[dx * dx + dy * dy < (0.21 * p) ** 2] = secondary
        else:
            rot = rng.random() * math.tau
            mask = np.zeros((size, size), bool)
            for j in range(5):
                t = rot + j * math.tau / 5
                px, py = 0.17 * p * math.cos(t), 0.17 * p * math.sin(t)
                mask |= (dx - px) ** 2 + (dy - py) ** 2 < (0.12 * p) ** 2
            out[mask] = secondary
    return Image.fromarray(out)


def _shade(rgb: RGB, factor: float) -> RGB:
    """factor < 1 darkens, > 1 mixes towards white."""
    if factor <= 1:
        return tuple(int(c * factor) for c in rgb)  # type: ignore[return-value]
    t = factor - 1
    return tuple(int(c + (255 - c) * t) for c in rgb)  # type: ignore[return-value]


def _luma(rgb: RGB) -> float:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def _line_colour(rgb: RGB) -> RGB:
    """Outlines and seams: darker than the garment, or lighter on very dark garments so they stay visible."""
    return _shade(rgb, 1.4) if _luma(rgb) < 60 else _shade(rgb, 0.5)


def _inner_shade(rgb: RGB, factor: float) -> RGB:
    """Shaded parts (neck openings, waistbands); on near-black garments darkening shows nothing: lighten."""
    if _luma(rgb) < 60 and factor < 1:
        return _shade(rgb, 1 + (1 - factor) * 0.5)
    return _shade(rgb, factor)


def _contrast(primary: RGB, secondary: RGB | None) -> RGB:
    """Hardware colour (buttons, zips, laces): ivory or near-black, whichever stands out from the fabric."""
    fabric = [primary] + ([secondary] if secondary else [])
    ivory, dark = (240, 236, 222), (38, 38, 42)
    if secondary is None:
        return ivory if _luma(primary) < 150 else dark
    return max((ivory, dark), key=lambda c: min(colour_distance(c, f) for f in fabric))


def _logo_colour(primary: RGB, secondary: RGB | None) -> RGB:
    """The logo colour that stands out most from both fabric colours (a logo must never blend in)."""
    candidates: tuple[RGB, ...] = ((250, 250, 250), (20, 20, 24), (230, 30, 40), (250, 220, 30),
                                   (30, 160, 220))
    others = [primary] + ([secondary] if secondary else [])
    return max(candidates, key=lambda c: min(colour_distance(c, o) for o in others))


@dataclass
class Scene:
    """What an image shows besides the product: never in the text, shared by a product and its variants."""

    background: RGB
    model: bool
    skin: RGB
    hair: RGB
    tint: tuple[int, int, int]  # small per-product colour jitter, so a colour is a range, not one RGB value

    def to_json(self) -> dict[str, Any]:
        return {"background": list(self.background), "model": self.model, "skin": list(self.skin)}


def sample_scene(rng: random.Random) -> Scene:
    base = rng.randint(226, 246)
    background = tuple(min(255, base + rng.randint(-5, 5)) for _ in range(3))
    return Scene(
        background=background,  # type: ignore[arg-type]
        model=rng.random() < MODEL_SHARE,
        skin=rng.choice(SKIN_TONES),
        hair=rng.choice(HAIR_COLOURS),
        tint=tuple(rng.randint(-8, 8) for _ in range(3)),  # type: ignore[arg-type]
    )


def _tinted(rgb: RGB, tint: tuple[int, int, int]) -> RGB:
    r, g, b = (max(0, min(255, c + t)) for c, t in zip(rgb, tint, strict=True))
    return r, g, b


def _supersampling(image_size: int) -> int:
    return 4 if image_size <= 128 else 2


def render(sub: Subcategory, attrs: dict[str, Any], scene: Scene, image_size: int,
           rng: random.Random) -> np.ndarray:
    """Draw one image of a product (HxWx3 uint8); `rng` only jitters the pose and the pattern phase."""
    ss = _supersampling(image_size)
    size = image_size * ss
    px = size / 64.0  # one output pixel at 64 px: floor for detail sizes so they survive the downsample
    primary = _tinted(COLOURS[attrs["colour"]], scene.tint)
    secondary = PATTERN_COLOURS.get(attrs.get("pattern_colour", ""))
    sketch = _Sketch()
    _DRAWERS[sub.category](sketch, sub, attrs, scene.model)

    xs = [p[0] for p in sketch.points]
    ys = [p[1] for p in sketch.points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if scene.model and y1 - y0 > 2.4:
        y0 = max(y0, -0.22)  # long garments on a model: crop the head at the frame, as catalogue photos do
    margin = 0.06 * size
    k = min((size - 2 * margin) / (x1 - x0), (size - 2 * margin) / (y1 - y0)) * rng.uniform(0.88, 1.0)
    free_x = (size - 2 * 0.03 * size - k * (x1 - x0)) / 2
    free_y = (size - 2 * 0.03 * size - k * (y1 - y0)) / 2
    ox = size / 2 - k * (x0 + x1) / 2 + rng.uniform(-1, 1) * free_x * 0.6
    oy = size / 2 - k * (y0 + y1) / 2 + rng.uniform(-1, 1) * free_y * 0.6

    def tr(pts: list[Point]) -> list[Point]:
        return [(ox + k * x, oy + k * y) for x, y in pts]

    def box(b: tuple[float, float, float, float]) -> list[float]:
        return [ox + k * b[0], oy + k * b[1], ox + k * b[2], oy + k * b[3]]

    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    pattern = _pattern_image(size, primary, attrs["pattern"], secondary, rng)
    line_rgb = _line_colour(primary)
    hardware = _contrast(primary, secondary)
    hardware_edge = _line_colour(hardware)
    lw = max(1, round(0.9 * px))

    def outline(pts: list[Point], rgb: RGB = line_rgb, width: int = lw) -> None:
        draw.line([*pts, pts[0]], fill=rgb, width=width, joint="curve")

    for kind, data in sketch.items:
        if kind == "garment":
            pts = tr(data[0])
            mask = Image.new("L", (size, size), 0)
            ImageDraw.Draw(mask).polygon(pts, fill=255)
            img.paste(pattern, (0, 0), mask)
            outline(pts)
        elif kind == "shade":
            pts = tr(data[0])
            draw.polygon(pts, fill=_inner_shade(primary, data[1]))
            outline(pts)
        elif kind == "solid":
            pts = tr(data[0])
            draw.polygon(pts, fill=data[1])
            outline(pts, _shade(data[1], 0.6))
        elif kind == "seam":
            draw.line(tr(data[0]), fill=line_rgb, width=lw)
        elif kind == "pocket":
            bx = box(data[0])
            for lo, hi in ((0, 2), (1, 3)):  # at least ~5.5 px at 64 px, or a pocket is a smudge
                grow = max(0.0, 5.5 * px - (bx[hi] - bx[lo])) / 2
                bx[lo], bx[hi] = bx[lo] - grow, bx[hi] + grow
            draw.rectangle(bx, fill=_inner_shade(primary, 0.85), outline=line_rgb,
                           width=max(lw, round(1.1 * px)))
            if data[1]:
                fy = bx[1] + (bx[3] - bx[1]) * 0.35
                draw.line([(bx[0], fy), (bx[2], fy)], fill=line_rgb, width=max(lw, round(1.1 * px)))
        elif kind == "buttons":
            r = max(data[1] * k, 1.45 * px)
            for x, y in tr(data[0]):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=hardware, outline=hardware_edge,
                             width=max(1, round(0.5 * px)))
        elif kind == "zip":
            pts = tr(data[0])
            w = max(round(0.035 * k), round(1.7 * px))
            draw.line(pts, fill=hardware_edge, width=w + 2 * max(1, round(0.5 * px)), joint="curve")
            draw.line(pts, fill=hardware, width=w, joint="curve")
            if data[1]:  # pull tab hanging from the zip's start
                (ax, ay) = pts[0]
                t = w * 1.1
                draw.rectangle([ax - t, ay + w * 0.4, ax + t, ay + w * 3.2], fill=hardware,
                               outline=hardware_edge, width=max(1, round(0.5 * px)))
        elif kind == "logo":
            (cx, cy), side = tr([data[0]])[0], max(data[1] * k, 4.6 * px) / 2
            logo_rgb = _logo_colour(primary, secondary)
            draw.rectangle([cx - side, cy - side, cx + side, cy + side], fill=logo_rgb,
                           outline=_line_colour(logo_rgb), width=max(1, round(0.5 * px)))
        elif kind == "laces":
            for p, q in data[0]:
                draw.line(tr([p, q]), fill=hardware, width=max(round(0.03 * k), round(1.2 * px)))
        elif kind == "handle":
            w = max(round(data[1] * k), round(2.0 * px))
            draw.arc(box(data[0]), 180, 360, fill=_inner_shade(primary, 0.7), width=w)
        elif kind == "skin_ellipse":
            draw.ellipse(box(data[0]), fill=scene.skin)
        elif kind == "skin_limb":
            a_, b_ = tr([data[0], data[1]])
            w = data[2] * k
            draw.line([a_, b_], fill=scene.skin, width=round(w))
            for cx, cy in (a_, b_):
                draw.ellipse([cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2], fill=scene.skin)
        elif kind == "hair":
            draw.chord(box(data[0]), 180, 360, fill=scene.hair)
    out = img.resize((image_size, image_size), Image.Resampling.BOX) if ss > 1 else img
    return np.asarray(out, dtype=np.uint8)
