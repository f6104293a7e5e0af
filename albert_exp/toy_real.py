"""The realistic toy (`corpus.toy_mode: realistic`): chat-style reviews whose test dishes hold unseen words.

    albert-exp corpus --config experiments/toy.yaml --toy --set corpus.toy_mode=realistic

Dish names come from several cuisines and naming patterns ("tagliatelle al ragù", "tacos de birria",
"grandma's meatloaf", "bún chả", generated names like "zokaretti"). Every dish *word* belongs to one split:
the words of each cuisine (real ones and seeded pseudo-words) are dealt to train / val / test / unlabelled-only,
so a test dish contains words that no training dish contains (by construction; `unseen_words()` checks it).
A share of test mentions (`SEEN_TEST_SHARE`) reuses training dishes, so metrics can be split seen / unseen.

Reviews mix English chat with Spanish, French, German and Indonesian phrases, distractor foods and drinks
that are never tagged (coffee, bread, a glass of wine), typos outside dish names, all-lower / ALL-CAPS /
Title casing, and emoji. The unlabelled corpus (ALBERT's format) draws dishes from every pool, including
an unlabelled-only pool and the test pool, so pretraining can teach those names' contexts without labels;
it never contains a labelled test review.
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator

from albert_exp.toy import Review, _split_sentences

Sentence = tuple[str, list[str]]  # (text, the dish names it mentions)

SPLITS = ("train", "val", "test", "unlabelled")
SHARES = (0.5, 0.15, 0.2, 0.15)  # of each cuisine's words: train, val, test, only in the unlabelled corpus
SEEN_TEST_SHARE = 0.2  # test mentions that reuse a training dish (the "seen" part of the split)
POPULAR, POPULAR_SHARE = 50, 0.3  # popular training dishes and their share of training mentions

# Per cuisine: words, the naming patterns that combine them (A, B: words of the cuisine; M: an English
# modifier shared by every split), and syllables for pseudo-words in the cuisine's style.
CUISINES: dict[str, dict] = {
    "italian": {
        "words": "tagliatelle pappardelle orecchiette bucatini rigatoni tortellini ravioli gnocchi risotto "
        "ossobuco saltimbocca carbonara amatriciana puttanesca cacio pepe ragù pesto arrabbiata vongole "
        "funghi tartufo burrata porchetta arancini focaccia calzone lasagne polenta caponata cannelloni "
        "scaloppine piccata margherita diavola bolognese marinara frittata panzanella ribollita",
        "patterns": ["A al B", "A alla B", "A B", "A ai B", "M A"],
        "syllables": "ta li ne ro bu ca ti pa del ri go zo ret vi lo",
    },
    "japanese": {
        "words": "tonkotsu shoyu miso ramen udon soba katsu karaage tempura teriyaki yakitori gyoza "
        "okonomiyaki takoyaki onigiri donburi oyakodon gyudon katsudon unagi tamago chashu sukiyaki "
        "shabu yakisoba tsukemen tantanmen nikujaga omurice tonkatsu",
        "patterns": ["A B", "A", "M A", "A B"],
        "syllables": "ka to ri shi mo na yu ke ta ko ra su ji",
    },
    "mexican": {
        "words": "tacos birria carnitas barbacoa pastor enchiladas tamales pozole mole chilaquiles "
        "quesadillas tostadas sopes huaraches elote esquites cochinita pibil tlayudas gorditas "
        "chiles rellenos flautas menudo machaca cecina",
        "patterns": ["A de B", "A al B", "A B", "M A", "A con B"],
        "syllables": "ta co chi la me ro pa zo hua qui te ma",
    },
    "indian": {
        "words": "paneer tikka masala chana aloo gobi saag dal makhani biryani korma vindaloo dosa idli "
        "sambar pakora samosa bhaji keema rogan josh kofta jalfrezi rasam uttapam pulao chole bhature",
        "patterns": ["A B", "A B", "M A B", "A"],
        "syllables": "pa ka ma ni sa ra ji go bha ti ko da",
    },
    "southeast_asian": {
        "words": "pad kra pao som tam khao soi larb tom yum kha gaeng massaman rendang laksa nasi goreng "
        "satay bún chả phở bò bánh xèo gỏi cuốn kaya adobo sinigang lumpia pancit",
        "patterns": ["A B", "A B B", "A", "M A"],
        "syllables": "pha kh ao som lar ngo bu cha nam roi tha",
    },
    "french": {
        "words": "boeuf bourguignon coq vin ratatouille cassoulet bouillabaisse confit canard quiche "
        "croque monsieur madame tartiflette blanquette veau gratin dauphinois pissaladière galette "
        "crêpes escargots moules frites niçoise",
        "patterns": ["A B", "A au B", "A de B", "A à la B", "A"],
        "syllables": "bou lan ge rie mon tar ette ois ceau ville",
    },
    "korean_levant": {
        "words": "bibimbap bulgogi japchae tteokbokki kimchi jjigae galbi samgyeopsal shakshuka falafel "
        "shawarma hummus tabbouleh fattoush mansaf kibbeh manakish musakhan lahmacun iskender kofte "
        "moussaka souvlaki spanakopita pastitsio",
        "patterns": ["A B", "A", "M A", "A B"],
        "syllables": "bi bim gal jja shak ma kib ne fa tah sou",
    },
    "homestyle": {
        "words": "meatloaf pot roast casserole chowder gumbo jambalaya cornbread brisket cobbler "
        "pierogi goulash schnitzel stroganoff pelmeni borscht paella fabada cocido feijoada moqueca "
        "ceviche empanadas arepas pupusas",
        "patterns": ["P's A", "P's M A", "A B", "M A", "A and B"],
        "syllables": "ber ko sta vin do lio gra pel mo za",
    },
}
MODIFIERS = "spicy crispy smoked grilled braised house famous sticky garlic double slow-cooked".split()
PEOPLE = "grandma nonna abuela chef mama papa uncle tita".split()
# Foods and drinks that are not dishes: in reviews, never tagged (and never part of a dish name).
DISTRACTOR_FOODS = [
    *"coffee espresso tea beer wine water lemonade soda sake bread butter fries dessert cocktail".split(),
    *["milkshake", "juice", "chips", "olives", "ice cream", "glass of wine", "side salad"],
]

# Drinks and sides with names as exotic as the dishes', dealt to the splits like dish words: a test review has
# foods that are no dish and that training never saw. Only the unlabelled corpus can teach their contexts.
EXOTIC_FOODS = (
    "horchata lassi ayran kombucha matcha chai soju makgeolli raki ouzo limoncello sangria mezcal kvass boba "
    "tepache calpico ramune chicha pulque amazake sikhye salep boza rooibos yerba mate cendol falooda "
    "sharbat jamaica tamarindo agua fresca atole champurrado"
).split()
DRINK_CONTEXTS = [
    "a glass of {food} to start",
    "we drank {food} all night",
    "sipping a cold {food}",
    "the {food} refill is free",
    "they pour the {food} at the table",
    "a pitcher of {food} for the table",
]
SENTENCES_WITH_DISH = [
    "I ordered the {d} and it was {good}",
    "the {d} was {good} honestly",
    "you HAVE to try the {d}",
    "their {d} is the best in town",
    "we shared the {d} and the {d2}",
    "my partner loved the {d}",
    "the {d} came out cold which was a shame",
    "skip the {d}, it was {bad}",
    "best thing on the menu: {d}",
    "got the {d} to share",
    "not a fan of the {d}, too salty",
    "ordered {d} twice this month",
    "if you go get the {d} and the {d2}",
    "would come back just for the {d}",
    "the {d} ({good}) was the highlight",
    "{d} + {d2} = perfect combo",
    "had {d}, {d2} and a {food}",
    "the {d} with a {food} on the side was {good}",
    # code-switching: a dish inside Spanish, French, German and Indonesian sentences
    "la {d} estaba buenísima",
    "pedimos {d} y estaba {good}",
    "le {d} était trop bon",
    "on a pris le {d}, franchement {good}",
    "das {d} war richtig lecker",
    "{d} nya enak banget",
]
SENTENCES_WITHOUT_DISH = [
    "the waiter was {good} and attentive",
    "we waited forty minutes for a table",
    "prices are fair",
    "the place was {bad} and noisy",
    "parking is a nightmare on weekends",
    "service was {good}",
    "the {food} was cold",
    "they were out of {food} today",
    "a {food} costs a fortune here",
    "the {food} is free with every order",
    "great {food} but the music was loud",
    "came for a {food} after work",
    "my friend only had a {food}",
    "el servicio fue lento",
    "le service était impeccable",
    "die bedienung war super nett",
    "pelayannya ramah banget",
    "booking ahead is a must",
    "the menu changes every season",
    "portions were huge",
    "third visit this month lol",
    "not sure about the new chef tbh",
]
# Compositional sentences around one dish: many more contexts than the fixed templates above.
OPENERS = ["", "", "omg", "honestly", "ok so", "tbh", "ngl", "update:", "fyi", "also", "btw"]
BEFORE = [
    "I ordered the",
    "we got the",
    "tried the",
    "had the",
    "my partner loved the",
    "you have to try the",
    "went for the",
    "grabbed the",
    "their",
    "the",
    "got 2x",
    "split the",
    "would come back for the",
    "skip the",
    "never order the",
    "kids devoured the",
    "finally tried their",
    "still dreaming about the",
    "we shared the",
    "the waiter recommended the",
    "get the",
    "i think the",
    "not sure why people like the",
]
AFTER = [
    "",
    "and it was {good}",
    "was {good}",
    "is the best in town",
    "came out cold",
    "was {bad}",
    "(so {good})",
    "- {good}",
    "was a bit {bad} tbh",
    "is a must",
    "10/10",
    "was worth it",
    "needs more salt",
    "hit the spot",
    "was gone in minutes",
    "for twelve bucks",
    "every single time",
    "again",
    "with extra sauce",
]
DISH_FIRST = ["{d} was {good}", "{d}: {good}", "{d} 10/10", "{d}!!!", "{d} = {good}", "{d}, {bad} though"]
GOOD = "amazing delicious superb fantastic lovely great perfect tasty incredible fire".split()
BAD = "bland dull greasy disappointing awful mediocre dry overcooked".split()
EMOJI = ["😍", "🔥", "👌", "😋", "🤤", "👍", "💯", "🙌", "😭", "🍜"]


def _pseudo_words(syllables: list[str], rng: random.Random, n: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        w = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
        if 4 <= len(w) <= 12 and w not in taken:
            taken.add(w)
            out.append(w)
    return out


def word_pools(seed: int, pseudo_per_cuisine: int = 40) -> dict[str, dict[str, list[str]]]:
    """{split: {cuisine: words}}: each cuisine's real and pseudo words dealt to the splits, disjoint."""
    rng = random.Random(f"{seed}-realistic-words")
    taken = {w for c in CUISINES.values() for w in c["words"].split()} | {
        w for f in DISTRACTOR_FOODS for w in f.split()
    }
    pools: dict[str, dict[str, list[str]]] = {s: {} for s in SPLITS}
    for name, c in CUISINES.items():
        words = list(dict.fromkeys(c["words"].split()))
        words += _pseudo_words(c["syllables"].split(), rng, pseudo_per_cuisine, taken)
        rng.shuffle(words)
        start = 0
        for split, share in zip(SPLITS, SHARES, strict=True):
            n = round(share * len(words)) if split != SPLITS[-1] else len(words) - start
            pools[split][name] = words[start : start + n]
            start += n
    return pools


def _dish(rng: random.Random, words: dict[str, list[str]]) -> str:
    cuisine = rng.choice([c for c in words if len(words[c]) >= 2])
    pattern = rng.choice(CUISINES[cuisine]["patterns"])
    a, b = rng.sample(words[cuisine], 2)
    b2 = rng.choice([w for w in words[cuisine] if w not in (a, b)] or [b])
    out = pattern.replace("A", "\0a").replace("B B", "\0b \0c").replace("B", "\0b")
    out = out.replace("M", rng.choice(MODIFIERS)).replace("P", rng.choice(PEOPLE))
    return out.replace("\0a", a).replace("\0b", b).replace("\0c", b2)


def dish_names(seed: int, split: str, n: int) -> list[str]:
    """n distinct dish names made only of `split`'s words (plus shared modifiers, people, linking words)."""
    pools = word_pools(seed)[split]
    rng = random.Random(f"{seed}-realistic-dishes-{split}")
    names: dict[str, None] = {}
    for _ in range(50 * n):
        names[_dish(rng, pools)] = None
        if len(names) >= n:
            break
    return list(names)


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    kind = rng.random()
    if kind < 0.4:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # swap
    if kind < 0.7:
        return word[:i] + word[i + 1 :]  # drop
    return word[:i] + word[i] + word[i:]  # double


def _case_dish(name: str, rng: random.Random) -> str:
    r = rng.random()
    if r < 0.2:
        return name.title()
    if r < 0.25:
        return name.upper()
    if r < 0.3:
        return name.capitalize()
    return name


def _sentence(template: str, rng: random.Random, dishes: list[str], foods: list[str] = DISTRACTOR_FOODS) -> str:
    # typos hit the template's words only: a dish keeps the spelling it is labelled with
    words = [_typo(w, rng) if rng.random() < 0.05 and "{" not in w else w for w in template.split(" ")]
    return " ".join(words).format(
        d=dishes[0] if dishes else "",
        d2=dishes[1] if len(dishes) > 1 else "",
        good=rng.choice(GOOD),
        bad=rng.choice(BAD),
        food=rng.choice(foods),
    )


def _dish_template(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return rng.choice(SENTENCES_WITH_DISH)
    if r < 0.55:
        return rng.choice(DISH_FIRST)
    return " ".join(p for p in (rng.choice(OPENERS), rng.choice(BEFORE), "{d}", rng.choice(AFTER)) if p)


def _dish_sentences(rng: random.Random, dishes: list[str], max_dishes: int, foods: list[str]) -> list[Sentence]:
    """1..max_dishes sentences, each naming one dish (two where the template has a second slot)."""
    out = []
    for _ in range(rng.randint(1, max_dishes)):
        template = _dish_template(rng)
        k = 2 if "{d2}" in template else 1
        names = [_case_dish(rng.choice(dishes), rng) for _ in range(k)]
        if k == 2 and names[0].lower() == names[1].lower():
            names = names[:1]
            template = template.replace("{d2}", "{food}")
        out.append((_sentence(template, rng, names, foods), names))
    return out


def _chat_text(rng: random.Random, sentences: list[Sentence]) -> str:
    """The sentences joined as chat: random end marks and emoji, sentence case or not, a whole-text casing."""
    parts = []
    for text, _ in sentences:
        end = rng.choice([".", ".", "!", "!!", "", " " + rng.choice(EMOJI)])
        parts.append(text[:1].upper() + text[1:] + end if rng.random() < 0.5 else text + end)
    text = " ".join(parts)
    r = rng.random()
    if r < 0.3:
        return text.lower()
    return text.upper() if r < 0.33 else text


def _mentions(text: str, sentences: list[Sentence]) -> list[str]:
    """Each named dish as written in `text` (after its casing), once."""
    phrases: list[str] = []
    for _, names in sentences:
        for name in names:
            m = re.search(re.escape(name), text, flags=re.IGNORECASE)
            if m and m.group(0).lower() not in {p.lower() for p in phrases}:
                phrases.append(m.group(0))
    return phrases


def review(
    rng: random.Random,
    dishes: list[str],
    positive: bool,
    max_dishes: int,
    foods: list[str] = DISTRACTOR_FOODS,
    drink_context: float = 0.0,
) -> Review:
    """A chat-style review of 1-5 sentences; a positive one mentions 1..max_dishes of `dishes`; `foods` (never
    tagged) fill dish-like and other slots; `drink_context`: chance of a sentence that says a food is a drink."""
    sentences = _dish_sentences(rng, dishes, max_dishes, foods) if positive else []
    # the same contexts around a food or drink that is no dish: context alone does not decide
    for _ in range(rng.randint(0, 1) if positive else rng.randint(0, 2)):
        template = _dish_template(rng).replace("{d2}", "{food}").replace("{d}", "{food}")
        sentences.append((_sentence(template, rng, [], foods), []))
    for _ in range(rng.randint(0 if positive else 1, 3)):
        sentences.append((_sentence(rng.choice(SENTENCES_WITHOUT_DISH), rng, [], foods), []))
    if rng.random() < drink_context:
        sentences.append((_sentence(rng.choice(DRINK_CONTEXTS), rng, [], foods), []))
    rng.shuffle(sentences)
    text = _chat_text(rng, sentences)
    # the label is the mention as written (after the review's casing), found again in the text
    return Review(text, _mentions(text, sentences))


def split_foods(seed: int, split: str) -> list[str]:
    """The foods and drinks of a split that are no dish: the common ones and the split's share of the exotic."""
    foods = list(EXOTIC_FOODS)
    random.Random(f"{seed}-realistic-foods").shuffle(foods)
    bounds = [0, *itertools.accumulate(round(x * len(foods)) for x in SHARES)]
    i = SPLITS.index(split)
    return DISTRACTOR_FOODS + foods[bounds[i] : bounds[i + 1] if i < len(SPLITS) - 1 else None]


def labelled_rows(seed: int, split: str, n: int, negative_share: float, max_dishes: int) -> Iterator[Review]:
    dishes = dish_names(seed, split, 4 * n)
    foods = split_foods(seed, split)
    # Popular dishes: the first POPULAR training names take POPULAR_SHARE of training mentions (so they are in
    # any train.csv) and SEEN_TEST_SHARE of test mentions (the seen part of the test split).
    popular = dish_names(seed, "train", POPULAR)
    share = {"train": POPULAR_SHARE, "test": SEEN_TEST_SHARE}.get(split, 0.0)
    repeat = round(share * len(dishes) / ((1 - share) * len(popular)))
    dishes = dishes + popular * repeat
    rng = random.Random(f"{seed}-realistic-{split}")
    for _ in range(n):
        yield review(rng, dishes, rng.random() >= negative_share, max_dishes, foods, drink_context=0.1)


def unlabelled_reviews(seed: int, exclude: set[str] = frozenset()) -> Iterator[str]:
    """An endless stream of chat reviews over dishes of every word pool (train, val, test and the pool that
    only this corpus has); a review whose text is in `exclude` (the labelled test reviews) is skipped."""
    dishes = [d for split in SPLITS for d in dish_names(seed, split, 3000)]
    foods = DISTRACTOR_FOODS + EXOTIC_FOODS
    rng = random.Random(f"{seed}-realistic-unlabelled")
    while True:
        r = review(rng, dishes, rng.random() < 0.7, 3, foods, drink_context=0.5)
        if r.text not in exclude:
            yield r.text


def unlabelled_documents(seed: int, n: int, exclude: set[str] = frozenset()) -> Iterator[list[str]]:
    """n documents of 2-8 sentences (one per line in ALBERT's format) from unlabelled_reviews()."""
    reviews = unlabelled_reviews(seed, exclude)
    rng = random.Random(f"{seed}-realistic-documents")
    for _ in range(n):
        sentences: list[str] = []
        target = rng.randint(2, 8)
        while len(sentences) < target:
            sentences.extend(_split_sentences(next(reviews)))
        yield sentences


def unseen_words(phrase: str, train_words: set[str]) -> list[str]:
    """The words of a phrase that no training phrase contains (case-insensitive)."""
    return [w for w in re.findall(r"\w+", phrase.lower()) if w not in train_words]
