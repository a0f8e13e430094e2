"""The synthetic fashion catalogue: the embedded default data (labelled synthetic everywhere it is reported).

Real fashion data cannot be downloaded here, so this module draws a procedural catalogue that exercises
what FashionBERT is for: fine-grained image–text matching. Each product is a garment drawn on a light
background with attributes that the text states and the pixels show (colour, pattern, sleeve length,
neckline, length, pockets, closure, logo). About a third of the products are *variants* of an earlier
product of the same subcategory that differ in exactly one or two attributes, so the same-subcategory
negatives of the eval sets include near-duplicates and a model that ignores details fails. Some images
carry irrelevant "model" regions (head, hands, legs) that the text never mentions, as real catalogue
photos do.

Design choices, and why:

* The text is the contract. Every attribute that is drawn is stated (absent details - no pockets, no logo -
  are simply not mentioned), and the text says nothing the image does not show except independent filler
  such as "Regular fit.". Titles and descriptions come from templates with synonyms in Fashion-Gen's style.
* Everything is sized for the 8×8 patch grid at 64 px: patterns have a period of ~7 px, and every detail
  (button, zip, logo, pocket) has a floor size in output pixels, so it covers at least a few pixels at 64 px.
  Garments are drawn at 4× (2× above 128 px) and box-filtered down, so edges are clean at any size.
* Determinism without global state: the catalogue comes from ``random.Random(seed)``; each image's jitter
  and pattern phase from a ``random.Random`` seeded with (seed, product, pose). No draw depends on the image
  size, so one seed gives the same catalogue (same attributes and texts) at 64 px and at 256 px.

The parts: `vocabulary` (colours, patterns, subcategories), `attributes` (drawing them, variants), `text` (title
and description), `drawing` (the image) and `catalogue` (products, poses, and the dataset dir).
"""

from __future__ import annotations

from fbcompress.data.synth.attributes import attribute_diff
from fbcompress.data.synth.catalogue import generate_catalogue, synthesize_dataset
from fbcompress.data.synth.drawing import render
from fbcompress.data.synth.text import describe
from fbcompress.data.synth.vocabulary import (
    COLOUR_WORDS,
    DESCRIBED_KEYS,
    GENERATOR,
    SOURCE,
    SUBCATEGORIES,
    SUBCATEGORY_BY_NAME,
)

__all__ = [
    "SOURCE",
    "GENERATOR",
    "COLOUR_WORDS",
    "DESCRIBED_KEYS",
    "SUBCATEGORIES",
    "SUBCATEGORY_BY_NAME",
    "attribute_diff",
    "describe",
    "render",
    "generate_catalogue",
    "synthesize_dataset",
]
