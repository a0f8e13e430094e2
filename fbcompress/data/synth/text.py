"""A product's title and description from its attributes: every drawn attribute stated, nothing else."""

from __future__ import annotations

import random
from typing import Any

from fbcompress.data.synth.vocabulary import COLOUR_WORDS, Subcategory

PATTERN_ADJ = {
    "stripes": ("striped",),
    "checks": ("checked", "gingham"),
    "dots": ("polka-dot", "dotted"),
    "floral": ("floral", "flower-print"),
}
_PATTERN_PHRASE = {
    "stripes": ("with {c} stripes", "with {c} horizontal stripes"),
    "checks": ("with {c} checks", "with a {c} check"),
    "dots": ("with {c} polka dots", "with {c} dots"),
    "floral": ("with a {c} floral print", "with {c} flowers"),
}
TITLE_ADJ: dict[str, dict[Any, tuple[str, ...]]] = {
    "sleeve": {"sleeveless": ("sleeveless",), "short": ("short-sleeve",), "long": ("long-sleeve",)},
    "neckline": {"round": ("crew-neck", "round-neck"), "v-neck": ("v-neck",), "collar": ("collared",)},
    "length": {"mini": ("mini",), "midi": ("midi",), "maxi": ("maxi",), "cropped": ("cropped",),
               "full": ("full-length",), "low-top": ("low-top",), "high-top": ("high-top",),
               "ankle": ("ankle",), "knee-high": ("knee-high",)},
    "closure": {"zip": ("zip-up",), "buttons": ("button-front", "buttoned")},
}
_LEAD = {
    "sleeve": {"sleeveless": "Sleeveless", "short": "Short sleeve", "long": "Long sleeve"},
    "length": {"mini": "Mini", "midi": "Midi", "maxi": "Maxi"},
}
_SENTENCES: dict[str, dict[Any, tuple[str, ...]]] = {
    "sleeve": {"sleeveless": ("Sleeveless.",), "short": ("Short sleeves.",), "long": ("Long sleeves.",)},
    "neckline": {"round": ("Round neck.", "Crew neck."), "v-neck": ("V-neck.", "V-neckline."),
                 "collar": ("Spread collar.", "Classic collar.")},
    "length": {"mini": ("Mini length.", "Above-the-knee length."),
               "midi": ("Midi length.", "Mid-calf length."),
               "maxi": ("Maxi length.", "Floor-length hem."),
               "cropped": ("Cropped leg.", "Cropped at the ankle."),
               "full": ("Full-length leg.", "Long straight leg."), "low-top": ("Low-top profile.",),
               "high-top": ("High-top profile.",), "ankle": ("Ankle-height shaft.",),
               "knee-high": ("Knee-high shaft.",)},
}
_CLOSURE_SENTENCES: dict[str, dict[str, tuple[str, ...]]] = {
    "front": {"buttons": ("Button closure at front.", "Buttoned front."),
              "zip": ("Zip closure at front.", "Zipped front.")},
    "neck": {"zip": ("Quarter-zip at neck.", "Zip at neck.")},
    "waist": {"buttons": ("Button fastening at waist.", "Buttoned waistband."),
              "zip": ("Zip fly.", "Zip fly at front.")},
    "side": {"zip": ("Zip closure at side.", "Side zip."), "laces": ("Lace-up.", "Lace-up front.")},
    "top": {"zip": ("Zip closure at top.", "Zipped top."),
            "buttons": ("Snap button at top.", "Button tab closure.")},
    "flap": {"zip": ("Zip closure at top.", "Zip-around top."),
             "buttons": ("Flap with button closure.", "Buttoned flap.")},
}
_POCKET_SENTENCES: dict[str, dict[int, tuple[str, ...]]] = {
    "chest": {1: ("Patch pocket at chest.", "Single chest pocket."),
              2: ("Two patch pockets at chest.", "Twin chest pockets.")},
    "hips": {2: ("Two patch pockets at front.", "Two front pockets.")},
    "waist": {2: ("Two flap pockets.", "Flap pockets at waist.")},
    "front": {1: ("Patch pocket at front.", "Front pocket.")},
}
_LOGO_SENTENCES = ("Small logo at {w}.", "Logo patch at {w}.")


def _pick(rng: random.Random, words: tuple[str, ...], canonical: float = 0.7) -> str:
    """The canonical word most of the time, a synonym otherwise: consistent enough to learn, not a lookup."""
    if len(words) == 1 or rng.random() < canonical:
        return words[0]
    return rng.choice(words[1:])


def _closure_sentences(sub: Subcategory, value: str) -> tuple[str, ...]:
    if sub.name == "sneakers":
        return _CLOSURE_SENTENCES["side"]["laces"]
    return _CLOSURE_SENTENCES[sub.closure_where][value]


def describe(sub: Subcategory, attrs: dict[str, Any], rng: random.Random) -> tuple[str, str]:
    """(title, description) stating every drawn attribute; absent details are not mentioned."""
    colour = _pick(rng, COLOUR_WORDS[attrs["colour"]])
    noun = _pick(rng, sub.nouns)
    pattern = attrs["pattern"]
    words = [colour.capitalize()]
    if pattern != "solid":
        words.append(_pick(rng, PATTERN_ADJ[pattern]))
    if sub.title_key and sub.title_key in attrs and rng.random() < 0.6:
        adj = TITLE_ADJ[sub.title_key].get(attrs[sub.title_key])
        if adj:
            words.append(_pick(rng, adj))
    title = " ".join([*words, noun])

    lead = sub.lead_key if sub.lead_key in _LEAD and sub.lead_key in attrs else None
    if pattern == "solid":
        body = f"in {colour}" if rng.random() < 0.6 else f"in solid {colour}"
    else:
        body = f"in {colour} " + rng.choice(_PATTERN_PHRASE[pattern]).format(c=attrs["pattern_colour"])
    if lead:
        first = f"{_LEAD[lead][attrs[lead]]} {noun} {body}."
    else:
        first = f"{noun.capitalize()} {body}."
    sentences = [first]
    for key in ("neckline", "sleeve", "length"):
        if key in attrs and key != lead:
            sentences.append(_pick(rng, _SENTENCES[key][attrs[key]], 0.6))
    if attrs.get("closure", "none") != "none":
        sentences.append(_pick(rng, _closure_sentences(sub, attrs["closure"]), 0.6))
    if attrs.get("pockets"):
        sentences.append(_pick(rng, _POCKET_SENTENCES[sub.pocket_where][attrs["pockets"]], 0.6))
    if attrs.get("logo"):
        sentences.append(_pick(rng, _LOGO_SENTENCES, 0.6).format(w=sub.logo_where))
    if rng.random() < (0.8 if len(sentences) <= 2 else 0.25):  # filler: states nothing about the image
        sentences.append(rng.choice(sub.filler))
    return title, " ".join(sentences)
