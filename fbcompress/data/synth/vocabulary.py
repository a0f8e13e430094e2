"""The catalogue's vocabulary: colours, patterns, subcategories and the attributes each one has."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SOURCE = "synthetic"
GENERATOR = "fbcompress.data.synth"
MIN_PRODUCTS = 20
MIN_IMAGE_SIZE = 32
VARIANT_SHARE = 0.36  # share of products (after the first few) that are near-duplicates of an earlier one
MODEL_SHARE = 0.3  # share of products photographed "on a model" (head, hands, legs: never in the text)

RGB = tuple[int, int, int]
Point = tuple[float, float]

# Primary colours: well separated in hue or lightness; the first word is canonical, the rest are synonyms.
COLOURS: dict[str, RGB] = {
    "black": (30, 30, 34),
    "grey": (138, 138, 142),
    "red": (206, 34, 44),
    "pink": (246, 142, 186),
    "orange": (246, 136, 32),
    "yellow": (250, 212, 46),
    "green": (34, 146, 70),
    "blue": (36, 96, 206),
    "purple": (124, 54, 162),
    "brown": (122, 76, 40),
}
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "black": ("black", "jet black"),
    "grey": ("grey", "gray"),
    "red": ("red", "scarlet"),
    "pink": ("pink", "rose"),
    "orange": ("orange", "tangerine"),
    "yellow": ("yellow", "lemon"),
    "green": ("green", "emerald"),
    "blue": ("blue", "cobalt"),
    "purple": ("purple", "violet"),
    "brown": ("brown", "chocolate"),
}
# Pattern (secondary) colours, always named canonically.
PATTERN_COLOURS: dict[str, RGB] = {
    "white": (248, 248, 245),
    "black": (24, 24, 28),
    "red": (214, 30, 40),
    "yellow": (252, 216, 40),
    "blue": (30, 90, 214),
    "green": (30, 152, 70),
    "pink": (246, 142, 186),
}
PATTERNS = ("solid", "stripes", "checks", "dots", "floral")
SKIN_TONES: tuple[RGB, ...] = ((243, 208, 182), (226, 176, 134), (194, 138, 98), (146, 98, 66), (98, 64, 46))
HAIR_COLOURS: tuple[RGB, ...] = ((40, 28, 22), (20, 20, 22), (196, 160, 96), (130, 66, 34))

# Attributes that the text states, in the order the description mentions them. `pattern` covers the pattern
# and its colour (`pattern_colour`), which `attribute_diff` counts as one attribute.
DESCRIBED_KEYS = ("colour", "pattern", "sleeve", "neckline", "length", "closure", "pockets", "logo")


@dataclass(frozen=True)
class Subcategory:
    """One kind of product: its silhouette drawer, nouns, and the options of each attribute it has."""

    name: str
    category: str
    nouns: tuple[str, ...]
    options: dict[str, tuple[Any, ...]]
    title_key: str | None  # the attribute the title names beside colour and pattern
    lead_key: str | None  # the attribute the description's first sentence names ("Long sleeve shirt in ...")
    pocket_where: str = "front"
    logo_where: str = "chest"
    closure_where: str = "front"
    filler: tuple[str, ...] = ("Regular fit.", "Cotton blend.", "Machine washable.")


_BOOL = (False, True)
SUBCATEGORIES: tuple[Subcategory, ...] = (
    Subcategory("t-shirt", "tops", ("t-shirt", "tee"),
                {"sleeve": ("sleeveless", "short", "long"), "neckline": ("round", "v-neck"),
                 "pockets": (0, 1), "logo": _BOOL}, "sleeve", "sleeve", pocket_where="chest"),
    Subcategory("shirt", "tops", ("shirt",),
                {"sleeve": ("short", "long"), "neckline": ("collar",), "closure": ("buttons",),
                 "pockets": (0, 1, 2), "logo": _BOOL}, "sleeve", "sleeve", pocket_where="chest",
                logo_where="sleeve"),
    Subcategory("sweater", "tops", ("sweater", "jumper", "pullover"),
                {"sleeve": ("long",), "neckline": ("round", "v-neck", "collar"), "closure": ("none", "zip"),
                 "logo": _BOOL}, "neckline", "sleeve", closure_where="neck",
                filler=("Regular fit.", "Soft knit.", "Wool blend.")),
    Subcategory("dress", "dresses", ("dress",),
                {"sleeve": ("sleeveless", "short", "long"), "neckline": ("round", "v-neck", "collar"),
                 "length": ("mini", "midi", "maxi"), "closure": ("none", "buttons", "zip"),
                 "pockets": (0, 2)},
                "length", "sleeve", pocket_where="hips"),
    Subcategory("trousers", "bottoms", ("trousers", "pants"),
                {"length": ("cropped", "full"), "closure": ("buttons", "zip"), "pockets": (0, 2),
                 "logo": _BOOL},
                "length", None, pocket_where="hips", logo_where="thigh", closure_where="waist"),
    Subcategory("skirt", "bottoms", ("skirt",),
                {"length": ("mini", "midi", "maxi"), "closure": ("none", "buttons"), "pockets": (0, 2),
                 "logo": _BOOL}, "length", "length", pocket_where="hips", logo_where="hem"),
    Subcategory("shorts", "bottoms", ("shorts",),
                {"closure": ("buttons", "zip"), "pockets": (0, 2), "logo": _BOOL}, None, None,
                pocket_where="hips", logo_where="hem", closure_where="waist"),
    Subcategory("jacket", "outerwear", ("jacket",),
                {"sleeve": ("long",), "neckline": ("collar", "round"), "closure": ("zip", "buttons"),
                 "pockets": (0, 2), "logo": _BOOL}, "closure", None, pocket_where="waist"),
    Subcategory("coat", "outerwear", ("coat", "overcoat"),
                {"sleeve": ("long",), "neckline": ("collar", "round"), "closure": ("buttons", "zip"),
                 "pockets": (0, 2), "logo": _BOOL}, "closure", None, pocket_where="waist",
                filler=("Regular fit.", "Wool blend.", "Fully lined.")),
    Subcategory("sneakers", "shoes", ("sneakers", "trainers"),
                {"length": ("low-top", "high-top"), "closure": ("laces",), "logo": _BOOL}, "length", None,
                logo_where="side", filler=("Padded insole.", "Cushioned footbed.")),
    Subcategory("boots", "shoes", ("boots",),
                {"length": ("ankle", "knee-high"), "closure": ("none", "zip"), "logo": _BOOL}, "length", None,
                logo_where="side", closure_where="side", filler=("Padded insole.", "Leather lining.")),
    Subcategory("tote", "bags", ("tote bag", "tote"),
                {"closure": ("none", "zip", "buttons"), "pockets": (0, 1), "logo": _BOOL}, None, None,
                logo_where="front", closure_where="top", filler=("Lined interior.", "Canvas construction.")),
    Subcategory("backpack", "bags", ("backpack", "rucksack"),
                {"closure": ("zip", "buttons"), "pockets": (0, 1), "logo": _BOOL}, None, None,
                logo_where="front", closure_where="flap", filler=("Padded back.", "Lined interior.")),
)
SUBCATEGORY_BY_NAME = {s.name: s for s in SUBCATEGORIES}
