"""Seeded synthetic restaurant reviews: a pretraining corpus and labelled dish-name CSVs.

    albert-exp corpus --config experiments/toy.yaml --toy

Dish names are composed from parts (style x main x dish x optional side: tens of thousands of combinations),
with casing and punctuation variety, placed in varied sentence templates among sentences about service,
price and ambience. The dish names are split between train, val and test by a seeded permutation of whole
combinations, so the test split holds names never seen in training: a tagger must read context, not recall
names. Negatives (no dish) mention food words in other roles ("the lamb place next door") so that word
identity alone does not solve the task.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

STYLES = [
    "spicy",
    "crispy",
    "smoked",
    "grilled",
    "braised",
    "roasted",
    "steamed",
    "honey glazed",
    "garlic",
    "slow cooked",
    "pan fried",
    "charred",
    "sticky",
    "creamy",
    "zesty",
    "peppered",
    "stuffed",
    "baked",
    "poached",
    "sizzling",
    "tandoori",
    "teriyaki",
    "cajun",
    "lemon",
    "miso",
    "chili",
    "herb crusted",
    "sesame",
    "truffle",
    "five spice",
]
MAINS = [
    "chicken",
    "lamb",
    "pork belly",
    "tofu",
    "beef",
    "duck",
    "shrimp",
    "salmon",
    "mushroom",
    "eggplant",
    "cod",
    "octopus",
    "squid",
    "venison",
    "rabbit",
    "halloumi",
    "chickpea",
    "crab",
    "scallop",
    "tuna",
    "goat",
    "quail",
    "lentil",
    "paneer",
    "turkey",
]
DISHES = [
    "dumplings",
    "noodles",
    "curry",
    "stew",
    "tacos",
    "risotto",
    "skewers",
    "burger",
    "salad",
    "soup",
    "ramen",
    "pie",
    "rice bowl",
    "flatbread",
    "lasagna",
    "gnocchi",
    "bao",
    "sliders",
    "wraps",
    "fritters",
    "kebab",
    "hotpot",
    "pasta",
    "sandwich",
    "pancakes",
]
SIDES = [
    "with garlic sauce",
    "in coconut broth",
    "with lime",
    "with pickled onions",
    "on sourdough",
    "with black beans",
    "in red wine",
    "with chimichurri",
    "with sweet potato",
    "with wild rice",
]

POSITIVE = [
    "I ordered the {d} and it was {adj}.",
    "The {d} was {adj}, honestly.",
    "You have to try the {d}!",
    "Their {d} is the best in town.",
    "We shared the {d} and the {d2}.",
    "My partner loved the {d}.",
    "The {d} came out cold, which was a shame.",
    "Came for the {d}, stayed for the dessert.",
    "Highly recommend the {d}.",
    '"{D}" - {adj}, would order again.',
    "Skip the {d}, it was {neg}.",
    "Best thing on the menu: {d}.",
    "The chef's {d} was {adj} and generous.",
    "We got {d} to share.",
    "Not a fan of the {d}, too salty.",
    "Their {d}, though, was {adj}!",
    "Ordered {d} twice this month.",
    "The kids devoured the {d} in minutes.",
    "If you go, get the {d} and the {d2}.",
    "I would come back just for the {d}.",
    "The {d} ({adj}) was the highlight.",
]
NEUTRAL = [
    "The waiter was {adj} and attentive.",
    "We waited forty minutes for a table.",
    "Prices are fair.",
    "The place was {neg} and noisy.",
    "Parking is a nightmare on weekends.",
    "Service was {adj}.",
    "The music was far too loud.",
    "Great atmosphere for a date night.",
    "Booking ahead is a must.",
    "The staff remembered our names.",
    "The terrace has a lovely view.",
    "The menu changes every season.",
    "Portions were huge.",
    "Our table was sticky.",
    "The wine list is short but good.",
    "The food was {adj} overall.",
    "Dessert took ages to arrive.",
    "It was my third visit.",
]
# Negatives that use dish words in other roles: a tagger that only recognises words would tag these.
DISTRACTORS = [
    "The {m} place next door was closed, so we came here.",
    "They were out of {m} today.",
    "My friend does not eat {m}.",
    "The {style} smell from the kitchen was {adj}.",
    "A {dish} shop opened across the street.",
    "We talked about {dish} recipes all evening.",
]
GOOD = ["amazing", "delicious", "superb", "fantastic", "lovely", "outstanding", "great", "perfect", "tasty"]
BAD = ["bland", "dull", "greasy", "disappointing", "awful", "mediocre", "dry", "overcooked"]


@dataclass(frozen=True)
class Review:
    text: str
    phrases: list[str]


def dish_names(seed: int) -> dict[str, list[tuple[str, ...]]]:
    """All combinations, split by a seeded permutation: 70% train, 15% val, 15% test (disjoint)."""
    combos = [(s, m, d, side) for s in STYLES for m in MAINS for d in DISHES for side in [""] + SIDES]
    random.Random(seed).shuffle(combos)
    n = len(combos)
    return {
        "train": combos[: int(0.7 * n)],
        "val": combos[int(0.7 * n) : int(0.85 * n)],
        "test": combos[int(0.85 * n) :],
    }


def _render_dish(combo: tuple[str, ...], rng: random.Random) -> str:
    style, main, dish, side = combo
    parts = [p for p in (style if rng.random() < 0.8 else "", main, dish, side if rng.random() < 0.5 else "") if p]
    name = " ".join(parts)
    r = rng.random()
    if r < 0.15:
        return name.title()
    if r < 0.2:
        return name.capitalize()
    if r < 0.22:
        return name.upper()
    return name


def _fill(template: str, rng: random.Random, dishes: list[str]) -> str:
    d = dishes[0] if dishes else ""
    d2 = dishes[1] if len(dishes) > 1 else ""
    return template.format(
        d=d,
        D=d[:1].upper() + d[1:],
        d2=d2,
        adj=rng.choice(GOOD),
        neg=rng.choice(BAD),
        m=rng.choice(MAINS),
        style=rng.choice(STYLES),
        dish=rng.choice(DISHES),
    )


def review(rng: random.Random, combos: list[tuple[str, ...]], positive: bool, max_dishes: int) -> Review:
    """One review of 1-4 sentences; a positive one mentions 1..max_dishes dishes."""
    sentences: list[str] = []
    phrases: list[str] = []
    if positive:
        for _ in range(rng.randint(1, max_dishes)):
            template = rng.choice(POSITIVE)
            k = 2 if "{d2}" in template else 1
            dishes = [_render_dish(rng.choice(combos), rng) for _ in range(k)]
            sentences.append(_fill(template, rng, dishes))
            phrases.extend(d for d in dishes if d.lower() not in {p.lower() for p in phrases})
    for _ in range(rng.randint(0 if positive else 1, 2)):
        pool = DISTRACTORS if rng.random() < 0.35 else NEUTRAL
        sentences.append(_fill(rng.choice(pool), rng, []))
    rng.shuffle(sentences)
    return Review(" ".join(sentences), phrases)


def labelled_rows(seed: int, split: str, n: int, negative_share: float, max_dishes: int) -> Iterator[Review]:
    combos = dish_names(seed)[split]
    rng = random.Random(f"{seed}-{split}")
    for _ in range(n):
        yield review(rng, combos, positive=rng.random() >= negative_share, max_dishes=max_dishes)


def pretraining_documents(seed: int, n: int) -> Iterator[list[str]]:
    """Documents of 2-8 sentences (one per line in ALBERT's format), drawn from every dish name."""
    combos = [c for part in dish_names(seed).values() for c in part]
    rng = random.Random(f"{seed}-pretraining")
    for _ in range(n):
        sentences: list[str] = []
        while len(sentences) < rng.randint(2, 8):
            r = review(rng, combos, positive=rng.random() < 0.6, max_dishes=2)
            sentences.extend(_split_sentences(r.text))
        yield sentences


def _split_sentences(text: str) -> list[str]:
    out, start = [], 0
    for i, ch in enumerate(text):
        if ch in ".!" and (i + 1 == len(text) or text[i + 1] == " "):
            out.append(text[start : i + 1].strip())
            start = i + 1
    if text[start:].strip():
        out.append(text[start:].strip())
    return out
