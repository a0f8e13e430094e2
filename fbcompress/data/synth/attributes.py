"""Drawing a product's attributes, and the near-duplicate variants that differ in one or two of them."""

from __future__ import annotations

import math
import random
from typing import Any

from fbcompress.data.synth.vocabulary import COLOURS, DESCRIBED_KEYS, PATTERN_COLOURS, PATTERNS, RGB, Subcategory


def colour_distance(a: RGB, b: RGB) -> float:
    return math.dist(a, b)


def _pattern_colours_for(colour: str) -> list[str]:
    """Secondary colours that stand out against `colour` (so the pattern survives the 64 px downsample)."""
    base = COLOURS[colour]
    return [name for name, rgb in PATTERN_COLOURS.items()
            if name != colour and colour_distance(base, rgb) > 120]


def _sample_pattern(rng: random.Random, colour: str) -> tuple[str, str | None]:
    pattern = rng.choices(PATTERNS, weights=(3, 2, 2, 2, 2))[0]
    if pattern == "solid":
        return pattern, None
    return pattern, rng.choice(_pattern_colours_for(colour))


def sample_attributes(sub: Subcategory, rng: random.Random) -> dict[str, Any]:
    colour = rng.choice(list(COLOURS))
    pattern, pattern_colour = _sample_pattern(rng, colour)
    attrs: dict[str, Any] = {"colour": colour, "pattern": pattern}
    if pattern_colour:
        attrs["pattern_colour"] = pattern_colour
    for key, values in sub.options.items():
        attrs[key] = rng.choice(values)
    return attrs


def attribute_diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The described attributes in which two products differ (pattern and its colour count as one)."""
    diff = []
    for key in DESCRIBED_KEYS:
        if key == "pattern":
            if (a.get("pattern"), a.get("pattern_colour")) != (b.get("pattern"), b.get("pattern_colour")):
                diff.append(key)
        elif a.get(key) != b.get(key):
            diff.append(key)
    return diff


def mutate(sub: Subcategory, parent: dict[str, Any], n_changes: int, rng: random.Random) -> dict[str, Any]:
    """A copy of `parent` with exactly `n_changes` described attributes changed (a hard negative)."""
    mutable = ["colour", "pattern"] + [k for k, v in sub.options.items() if len(v) > 1]
    attrs = {k: v for k, v in parent.items() if k != "variant_of"}
    for key in rng.sample(mutable, n_changes):
        if key == "colour":
            current = attrs.get("pattern_colour")
            choices = [c for c in COLOURS if c != attrs["colour"] and (current is None or current in
                                                                        _pattern_colours_for(c))]
            attrs["colour"] = rng.choice(choices)
        elif key == "pattern":
            old = (attrs["pattern"], attrs.get("pattern_colour"))
            new = old
            while new == old:
                new = _sample_pattern(rng, attrs["colour"])
            attrs["pattern"] = new[0]
            attrs.pop("pattern_colour", None)
            if new[1]:
                attrs["pattern_colour"] = new[1]
        else:
            attrs[key] = rng.choice([v for v in sub.options[key] if v != attrs[key]])
    return attrs


def signature(sub: Subcategory, attrs: dict[str, Any]) -> tuple:
    return (sub.name, *(str(attrs.get(k)) for k in (*DESCRIBED_KEYS, "pattern_colour")))
