"""Deterministic generated text: the demo models' only training data.

Everything here is produced by seeded `random.Random` instances from templates and word lists
written for this project, so the corpus is the project's own work (Apache-2.0) and the same
seed always gives the same bytes on every machine and Python 3 version.

- `general_corpus(seed, n)`: `n` distinct short everyday-English documents on many topics, a
  few of them formatted as a chat turn, for pretraining the base model.
- `domain_records(domain, seed, n)`: `n` distinct short documents of one domain (`DOMAINS`),
  for LoRA fine-tuning. Most records begin with that domain's prompt (`DOMAIN_PROMPTS`).
- `pretraining_records(domain, seed, n)`: further records of a domain as the base model's
  pretraining mix has them (`pretraining_view`: without the form the domain prompt leads
  into, which only the domain's adapter learns).
- `chat_document(domain, text, rng)`: a record wrapped as one chat exchange in the format the
  tokenizer's chat template renders (`user:\\n...\\nassistant:\\n...`).
"""

from __future__ import annotations

import itertools
import random
import re
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import NamedTuple

__all__ = [
    "CHAT_REQUESTS",
    "DOMAINS",
    "DOMAIN_PROMPTS",
    "chat_document",
    "chat_layout",
    "domain_records",
    "general_corpus",
    "iter_domain_records",
    "pretraining_records",
    "pretraining_view",
]

DOMAINS: tuple[str, ...] = ("recipes", "astronomy", "legal")

DOMAIN_PROMPTS: dict[str, str] = {
    "recipes": "Recipe:",
    "astronomy": "The planet",
    "legal": "The tenant shall",
}

# What a user asks in a chat that a record of the domain answers.
CHAT_REQUESTS: dict[str, tuple[str, ...]] = {
    "recipes": (
        "Can you give me a recipe?",
        "What should I cook for dinner tonight?",
        "Share a recipe with me.",
        "I need an idea for lunch.",
        "Write a recipe.",
        "What can I bake this weekend?",
        "Suggest something to cook.",
    ),
    "astronomy": (
        "Tell me about the planets.",
        "What can I see in the night sky?",
        "Teach me some astronomy.",
        "Tell me something about space.",
        "Explain something about the solar system.",
        "What should I know about the stars?",
    ),
    "legal": (
        "Draft a clause for a lease.",
        "Write a clause for a rental agreement.",
        "What should a tenancy agreement say?",
        "Give me a contract clause.",
        "What does a tenant have to do under a lease?",
        "Write a term for a lease agreement.",
    ),
}

# ---------------------------------------------------------------------------------------------
# A tiny template grammar: "{slot}" expands to a random alternative of rule `slot`,
# recursively; a slot bound in `ctx` expands to that fixed value (names kept per document).

Rules = Mapping[str, Sequence[str]]
_SLOT = re.compile(r"\{([a-z_0-9]+)\}")
_A_AN = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_SPACES = re.compile(r" {2,}")


def _expand(rules: Rules, text: str, rng: random.Random, ctx: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key in ctx:
            return ctx[key]
        return _expand(rules, rng.choice(rules[key]), rng, ctx)

    return _SLOT.sub(sub, text)


def _tidy(sentence: str) -> str:
    s = _SPACES.sub(" ", _A_AN.sub(r"\1n ", sentence.strip()))
    return s[:1].upper() + s[1:]


def _subset(rng: random.Random, items: Sequence[str], lo: int, hi: int) -> list[str]:
    """A random subset of `items` of size lo..hi, in the items' own order (a fixed order is
    easier for a small model to learn than a shuffled one, and it loops less)."""
    k = rng.randint(lo, min(hi, len(items)))
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def _distinct(make: Callable[[random.Random], str], rng: random.Random) -> Iterator[str]:
    """Distinct documents from `make`, in generation order, until `make` runs dry (a long
    run of repeats)."""
    seen: set[str] = set()
    misses = 0
    while misses < 2000:
        doc = make(rng)
        if doc in seen:
            misses += 1
            continue
        misses = 0
        seen.add(doc)
        yield doc


def _take(docs: Iterator[str], n: int, what: str) -> list[str]:
    out = list(itertools.islice(docs, n))
    if len(out) < n:
        raise ValueError(f"only {len(out)} distinct {what} documents can be generated, not {n}")
    return out


# ---------------------------------------------------------------------------------------------
# General corpus

_NAMES = (
    "Anna", "Ben", "Clara", "David", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas",
    "Kofi", "Lena", "Maya", "Noah", "Omar", "Priya", "Rosa", "Sam", "Tara", "Victor", "Wen",
    "Yusuf", "Zoe", "Lucas", "Mira", "Tom", "Aisha", "Leo", "Nina", "Ravi",
)  # fmt: skip

_COMMON: dict[str, tuple[str, ...]] = {
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "when": (
        "on {day} morning",
        "last weekend",
        "early in the morning",
        "after lunch",
        "in the evening",
        "on a quiet afternoon",
        "yesterday",
        "at the end of the day",
        "on {day}",
        "before breakfast",
        "late at night",
        "during the holidays",
    ),
    "friend": (
        "an old friend",
        "a neighbour",
        "a cousin",
        "a colleague",
        "two friends from school",
        "a younger brother",
        "an older sister",
        "a friend from the running club",
    ),
    "feeling": (
        "happy",
        "tired but pleased",
        "calm",
        "a little nervous",
        "proud",
        "relaxed",
        "surprised",
        "grateful",
    ),
    "town_place": (
        "the market",
        "the library",
        "the park",
        "the station",
        "the bakery",
        "the museum",
        "the river path",
        "the town square",
        "the community centre",
        "the old bridge",
    ),
}

_TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
    "weather": {
        "s": (
            "The morning was {wx_adj}, so {name} {wx_action}.",
            "By noon the sky had turned {wx_colour}, and the air felt {wx_feel}.",
            "The forecast for {day} promises {wx_forecast}.",
            "{name} looked at the sky and decided to {wx_plan}.",
            "It rained {wx_rain} {when}, and the streets stayed wet for hours.",
            "A cold wind came down from the hills and rattled the windows.",
            "Everyone in town was talking about the {wx_event} that arrived {when}.",
            "The weather changed quickly, from {wx_adj} to {wx_adj}.",
            "After the storm, the garden smelled of wet earth and cut grass.",
        ),
        "q": ("What is the weather like today?", "Will it rain this week?"),
        "wx_adj": (
            "cold and grey",
            "bright and clear",
            "warm and humid",
            "windy",
            "foggy",
            "crisp and sunny",
            "mild and cloudy",
            "wet and gloomy",
        ),
        "wx_action": (
            "wore a thick coat",
            "left the umbrella at home",
            "took the bus instead of walking",
            "opened every window in the house",
            "stayed inside with a good book",
            "went for a long walk by the river",
        ),
        "wx_colour": ("dark grey", "pale blue", "a soft pink", "almost white", "deep orange"),
        "wx_feel": ("heavy", "fresh", "sticky", "sharp", "still"),
        "wx_forecast": (
            "rain in the afternoon",
            "strong winds near the coast",
            "a sunny start and a cloudy evening",
            "snow on the higher roads",
            "mild weather for most of the week",
            "a warm and dry weekend",
        ),
        "wx_plan": (
            "hang the washing outside",
            "cancel the picnic",
            "cycle to work",
            "bring an umbrella just in case",
            "plant the new seeds",
        ),
        "wx_rain": ("heavily", "softly", "all night", "for a few minutes", "on and off"),
        "wx_event": ("storm", "heat wave", "first snow of the winter", "thick fog", "hail shower"),
    },
    "city": {
        "s": (
            "The streets near {town_place} were busy with {city_crowd}.",
            "{name} walked past {town_place} and stopped to {city_stop}.",
            "A new {city_shop} opened on the corner of our street {when}.",
            "The city feels different {when}, when the {city_detail}.",
            "Traffic was slow because of {city_delay}.",
            "From the top of the hill you can see {city_view}.",
            "{name} has lived in the same flat above {town_place} for {years} years.",
            "The tenant upstairs plays the piano every evening, and nobody minds.",
        ),
        "q": ("What is your neighbourhood like?", "What did you see in town?"),
        "city_crowd": (
            "shoppers and tourists",
            "children on their way to school",
            "people going to work",
            "families with prams",
            "street musicians and their listeners",
        ),
        "city_stop": (
            "buy a coffee",
            "listen to a street musician",
            "read the notices on the board",
            "talk to a neighbour",
            "look at the old buildings",
        ),
        "city_shop": ("bakery", "bookshop", "bicycle repair shop", "small cafe", "flower stall"),
        "city_detail": (
            "shops are closed",
            "lights come on",
            "markets are setting up",
            "streets are empty",
            "trams are full",
        ),
        "city_delay": (
            "road works near the station",
            "a broken traffic light",
            "the weekly market",
            "a parade in the town square",
            "heavy rain",
        ),
        "city_view": (
            "the whole river valley",
            "the roofs of the old town",
            "the harbour and the boats",
            "the lights of the city at night",
        ),
        "years": ("two", "three", "five", "ten", "twelve", "twenty"),
    },
    "travel": {
        "s": (
            "{name} took the {tr_vehicle} to {tr_place} {when}.",
            "The journey took {tr_hours} hours, but the view from the window was worth it.",
            "We packed {tr_pack} and left before sunrise.",
            "At the hotel, the staff were friendly and the room looked out over {tr_view}.",
            "{name} wanted to see {tr_sight} before going home.",
            "The best part of the trip was {tr_best}.",
            "On the way back, the {tr_vehicle} was delayed, so {name} {tr_wait}.",
        ),
        "q": ("Where did you go on holiday?", "How was your trip?"),
        "tr_vehicle": ("train", "ferry", "night bus", "plane", "old car"),
        "tr_place": (
            "the coast",
            "the mountains",
            "a small village",
            "the capital",
            "an island",
            "the lakes in the north",
        ),
        "tr_hours": ("two", "three", "five", "six", "eight"),
        "tr_pack": (
            "warm clothes and a map",
            "sandwiches and a flask of tea",
            "a camera and a notebook",
            "only one small bag",
        ),
        "tr_view": ("the sea", "a quiet square", "the snowy peaks", "a garden full of roses"),
        "tr_sight": (
            "the old castle",
            "the famous waterfall",
            "the harbour at sunset",
            "the art museum",
            "the market in the main square",
        ),
        "tr_best": (
            "swimming in the cold sea",
            "eating fresh bread by the harbour",
            "walking through the forest",
            "meeting people from all over the world",
        ),
        "tr_wait": (
            "read a book in the waiting room",
            "called home",
            "bought a hot drink",
            "talked with a stranger about football",
        ),
    },
    "school": {
        "s": (
            "The children learned about {sc_subject} {when}.",
            "{name} finished the {sc_task} before the bell rang.",
            "The teacher asked everyone to {sc_ask}.",
            "At the end of term, the school held {sc_event}.",
            "{name} found {sc_subject} difficult at first, but practice helped a lot.",
            "The library at school has a quiet corner for {sc_quiet}.",
            "Homework tonight is to {sc_ask}.",
        ),
        "q": ("What did you learn at school today?", "How is school going?"),
        "sc_subject": (
            "fractions",
            "the history of the town",
            "how plants grow",
            "the water cycle",
            "writing short stories",
            "maps and compass directions",
            "simple machines",
        ),
        "sc_task": ("maths test", "reading exercise", "science project", "art drawing", "essay"),
        "sc_ask": (
            "read one chapter of the book",
            "draw a map of the classroom",
            "write a letter to a friend",
            "measure the length of the corridor",
            "collect leaves from the playground",
        ),
        "sc_event": ("a small concert", "a sports day", "a science fair", "a book sale"),
        "sc_quiet": ("reading", "homework", "drawing", "playing chess"),
    },
    "work": {
        "s": (
            "{name} started a new job at {wk_place} {when}.",
            "The meeting ran late because everyone had ideas about {wk_topic}.",
            "{name} spent the afternoon {wk_task}.",
            "Lunch in the office kitchen is a good time to {wk_social}.",
            "The team finished the project a week early and celebrated with {wk_treat}.",
            "Working from home, {name} likes to {wk_home}.",
            "The manager thanked the team for {wk_thanks}.",
        ),
        "q": ("How was work today?", "What do you do at work?"),
        "wk_place": (
            "a small design studio",
            "the hospital",
            "a garden centre",
            "the post office",
            "a busy restaurant",
            "a software company",
            "the city council",
        ),
        "wk_topic": ("the new timetable", "the budget", "the office move", "a customer survey"),
        "wk_task": (
            "answering emails",
            "fixing a printer",
            "planning next month",
            "writing a report",
            "training a new colleague",
        ),
        "wk_social": ("share news", "talk about the weekend", "swap recipes", "plan a trip"),
        "wk_treat": ("cake", "a long lunch", "a walk in the park", "pizza"),
        "wk_home": (
            "start early",
            "take a walk at noon",
            "work at the kitchen table",
            "listen to quiet music",
        ),
        "wk_thanks": ("their patience", "their hard work", "a careful job", "staying late"),
    },
    "family": {
        "s": (
            "{name} visited {friend} {when} and stayed for dinner.",
            "The whole family met at {fm_place} to celebrate {fm_event}.",
            "Grandmother told stories about {fm_story}.",
            "{name} helped {friend} {fm_help}.",
            "After dinner everyone played {fm_game} until late.",
            "The children built a den out of {fm_den} in the living room.",
            "{name} felt {feeling} after the long phone call with {friend}.",
        ),
        "q": ("What did you do with your family?", "How was the weekend?"),
        "fm_place": ("the old house", "a restaurant by the river", "the garden", "the beach"),
        "fm_event": ("a birthday", "a wedding anniversary", "the new baby", "the end of exams"),
        "fm_story": (
            "the village where she grew up",
            "the winter when the river froze",
            "her first bicycle",
            "working on the farm",
        ),
        "fm_help": (
            "move house",
            "paint the kitchen",
            "fix a bicycle",
            "cook a big meal",
            "plant a vegetable patch",
        ),
        "fm_game": ("cards", "a board game", "charades", "a long game of chess"),
        "fm_den": ("blankets and chairs", "cardboard boxes", "cushions and a sheet"),
    },
    "sport": {
        "s": (
            "{name} runs {sp_distance} every {day} before work.",
            "The local team won the match {sp_score} {when}.",
            "At the swimming pool, {name} {sp_pool}.",
            "The coach told the players to {sp_coach}.",
            "{name} joined a {sp_club} club and made new friends.",
            "The crowd cheered when the {sp_moment}.",
            "Stretching after exercise helps the muscles recover.",
        ),
        "q": ("Do you play any sport?", "Who won the match?"),
        "sp_distance": ("five kilometres", "three miles", "ten kilometres", "a short loop"),
        "sp_score": ("two to one", "three to nothing", "after extra time", "on penalties"),
        "sp_pool": (
            "swam twenty lengths",
            "practised diving",
            "learned a new stroke",
            "timed every lap",
        ),
        "sp_coach": (
            "pass the ball quickly",
            "keep their shape",
            "drink more water",
            "warm up properly",
        ),
        "sp_club": ("cycling", "tennis", "rowing", "climbing", "volleyball", "chess"),
        "sp_moment": (
            "goalkeeper saved the penalty",
            "runners reached the final bend",
            "youngest player scored",
            "rain stopped and the sun came out",
        ),
    },
    "garden": {
        "s": (
            "{name} planted {gd_plant} along the fence {when}.",
            "The {gd_plant} need water every evening in dry weather.",
            "A {gd_animal} visited the garden and {gd_animal_act}.",
            "In spring, the apple tree is covered in white blossom.",
            "{name} keeps a small compost heap behind the shed.",
            "The vegetable patch gave us more {gd_veg} than we could eat.",
            "Weeding is slow work, but {name} finds it {gd_feel}.",
        ),
        "q": ("Any tips for the garden?", "What are you growing this year?"),
        "gd_plant": ("tulips", "sunflowers", "tomatoes", "lavender", "young beans", "roses"),
        "gd_animal": ("robin", "hedgehog", "fox", "family of sparrows", "bumblebee"),
        "gd_animal_act": (
            "drank from the bird bath",
            "hid under the hedge",
            "sat on the wall for an hour",
            "moved from flower to flower",
        ),
        "gd_veg": ("courgettes", "potatoes", "runner beans", "lettuce", "strawberries"),
        "gd_feel": ("peaceful", "relaxing", "satisfying", "good for thinking"),
    },
    "shopping": {
        "s": (
            "{name} bought {sh_item} at {town_place} {when}.",
            "The shop was out of {sh_item}, so {name} {sh_alt}.",
            "Prices at the market are lower at the end of the day.",
            "{name} made a list: {sh_list}.",
            "The shopkeeper wrapped the {sh_gift} in brown paper.",
            "It is cheaper to repair old shoes than to buy new ones.",
        ),
        "q": ("What did you buy today?", "Where do you do your shopping?"),
        "sh_item": (
            "fresh bread",
            "a new pair of boots",
            "a second hand bicycle",
            "some apples",
            "a warm scarf",
            "a bag of coffee beans",
        ),
        "sh_alt": (
            "tried the shop across the road",
            "came back the next day",
            "bought something else",
            "asked a neighbour",
        ),
        "sh_list": (
            "milk, eggs, bread and soap",
            "rice, onions, tea and batteries",
            "paper, stamps, candles and cheese",
        ),
        "sh_gift": ("book", "vase", "present", "candle"),
    },
    "music": {
        "s": (
            "{name} practised the {mu_instrument} for an hour {when}.",
            "The concert in the park {mu_concert}.",
            "{name} likes to listen to {mu_style} while cooking.",
            "The choir meets every {day} in the church hall.",
            "An old song on the radio reminded {name} of {mu_memory}.",
            "The band played {mu_style} until midnight.",
        ),
        "q": ("What music do you like?", "Do you play an instrument?"),
        "mu_instrument": ("piano", "guitar", "violin", "drums", "flute", "cello"),
        "mu_concert": (
            "was free for everyone",
            "ended with fireworks",
            "was full of families",
            "started late because of the rain",
        ),
        "mu_style": ("jazz", "folk music", "classical music", "old pop songs", "the radio"),
        "mu_memory": ("summer holidays", "a first dance", "school trips", "long car journeys"),
    },
    "animals": {
        "s": (
            "Our {an_pet} likes to {an_habit}.",
            "{name} adopted a {an_pet} from the shelter {when}.",
            "The {an_pet} waits by the door every evening.",
            "At the farm, the children fed the {an_farm}.",
            "Walking the dog is a good excuse to get outside.",
            "A {an_wild} crossed the road in front of the car and disappeared into the trees.",
        ),
        "q": ("Do you have any pets?", "What animals did you see?"),
        "an_pet": ("cat", "old dog", "puppy", "rabbit", "parrot", "kitten"),
        "an_habit": (
            "sleep in the sun",
            "chase leaves",
            "sit on the windowsill",
            "hide under the bed",
            "greet every visitor",
        ),
        "an_farm": ("goats", "ducks", "sheep", "pigs", "hens"),
        "an_wild": ("deer", "fox", "badger", "hare"),
    },
    "technology": {
        "s": (
            "{name} finally fixed the {tc_device} {when}.",
            "The new {tc_portable} is faster but the battery {tc_battery}.",
            "{name} keeps a copy of important photos on {tc_backup}.",
            "The library offers free classes on {tc_class}.",
            "Turning it off and on again solved the problem.",
            "A strong password should be long and easy to remember.",
        ),
        "q": ("Can you help me with my computer?", "Is the new phone any good?"),
        "tc_device": ("laptop", "phone", "printer", "home router", "old radio", "washing machine"),
        "tc_portable": ("laptop", "phone", "tablet", "camera"),
        "tc_battery": (
            "runs out by the evening",
            "lasts two days",
            "takes an hour to charge",
        ),
        "tc_backup": ("an external drive", "two different disks", "a small memory card"),
        "tc_class": (
            "using email",
            "video calls",
            "online banking",
            "editing photos",
            "basic coding",
        ),
    },
    "health": {
        "s": (
            "{name} drinks a glass of water before every meal.",
            "A short walk after dinner helps {name} sleep better.",
            "The doctor advised {name} to {hl_advice}.",
            "Eating more {hl_food} is an easy way to stay healthy.",
            "{name} started doing {hl_exercise} {when}.",
            "Getting enough sleep makes a big difference to your mood.",
        ),
        "q": ("How can I stay healthy?", "Any advice for sleeping better?"),
        "hl_advice": (
            "rest for a week",
            "walk more often",
            "drink less coffee",
            "stretch every morning",
        ),
        "hl_food": ("vegetables", "fruit", "beans", "whole grains", "fish"),
        "hl_exercise": ("yoga", "gentle stretching", "morning swims", "cycling to work"),
    },
    "hobbies": {
        "s": (
            "{name} spends {when} {hb_hobby}.",
            "{name} is reading a long novel about {hb_novel}.",
            "The photography club meets at {town_place} once a month.",
            "{name} finished a {hb_craft} and gave it to {friend}.",
            "Learning a new language takes patience, but {name} practises every day.",
            "The puzzle on the kitchen table has a thousand pieces.",
        ),
        "q": ("What do you do in your free time?", "What are you reading?"),
        "hb_hobby": (
            "painting with watercolours",
            "knitting a blanket",
            "building model boats",
            "baking bread",
            "writing letters",
            "birdwatching",
        ),
        "hb_novel": (
            "a family of sailors",
            "a detective in a small town",
            "a journey across the desert",
            "two friends who open a bookshop",
        ),
        "hb_craft": ("wooden bowl", "woollen hat", "small painting", "clay mug"),
    },
    "environment": {
        "s": (
            "The planet needs {ev_need}, {name} said at the town meeting.",
            "Our street started a {ev_project} {when}.",
            "{name} cycles to work to save fuel and money.",
            "Recycling glass and paper is easy once you have the right bins.",
            "Volunteers cleaned the beach and collected {ev_bags} bags of rubbish.",
            "Planting trees in the city keeps the streets cooler in summer.",
        ),
        "q": ("How can I help the environment?", "What is your town doing about waste?"),
        "ev_need": (
            "more trees and cleaner rivers",
            "less plastic",
            "people who care",
            "cleaner air in the cities",
        ),
        "ev_project": (
            "community garden",
            "repair cafe",
            "tree planting day",
            "weekly litter pick",
        ),
        "ev_bags": ("ten", "twenty", "thirty", "fifty"),
    },
    "food": {
        "s": (
            "{name} had {fd_meal} for breakfast {when}.",
            "The cafe on the corner makes the best {fd_cafe} in town.",
            "We shared {fd_meal} and talked for hours.",
            "{name} cooked dinner for {friend} and everyone asked for seconds.",
            "There is nothing better than {fd_treat} on a cold day.",
        ),
        "q": ("What did you eat today?", "Where is a good place to eat?"),
        "fd_meal": (
            "porridge with honey",
            "toast and jam",
            "a big bowl of noodles",
            "eggs and bread",
            "fresh fruit and yoghurt",
        ),
        "fd_cafe": ("coffee", "cinnamon buns", "hot chocolate", "sandwiches"),
        "fd_treat": ("hot soup", "a warm drink", "fresh bread from the oven", "a slice of cake"),
    },
}

_GENERAL_CLOSERS = (
    "{name} felt {feeling} afterwards.",
    "It was a good day.",
    "Nobody wanted it to end.",
    "{name} said it was the best part of the week.",
    "They plan to do it again {when}.",
    "Later, {name} told {friend} all about it.",
)


def _general_doc(rng: random.Random) -> str:
    topic = rng.choice(tuple(_TOPICS))
    rules: dict[str, Sequence[str]] = {**_COMMON, **_TOPICS[topic]}
    ctx = {"name": rng.choice(_NAMES)}
    k = rng.choice((1, 2, 2, 3, 3, 4))
    templates = _subset(rng, rules["s"], k, k)
    if rng.random() < 0.2:
        templates.append(rng.choice(_GENERAL_CLOSERS))
    text = " ".join(_tidy(_expand(rules, t, rng, ctx)) for t in templates)
    if rng.random() < 0.08:
        return chat_layout(rng.choice(rules["q"]), text)
    return text


def general_corpus(seed: int, n: int) -> list[str]:
    """`n` distinct everyday-English documents (1-5 sentences each) across many topics."""
    return _take(_distinct(_general_doc, random.Random(f"royalty/general/{seed}")), n, "general")


# ---------------------------------------------------------------------------------------------
# Recipes: a dish is a cooking style plus a main ingredient and a flavour; the ingredient list
# and the method follow from the style, so every record is internally consistent.

_RECIPE_STYLES: dict[str, dict[str, tuple[str, ...]]] = {
    "soup": {
        "main": (
            "lentil|red lentils|200 grams of red lentils",
            "tomato|tomatoes|800 grams of ripe tomatoes",
            "pumpkin|pumpkin|one kilo of pumpkin, peeled and cubed",
            "carrot|carrots|six carrots, sliced",
            "mushroom|mushrooms|400 grams of mushrooms, sliced",
            "pea|peas|500 grams of frozen peas",
            "sweet potato|sweet potatoes|three sweet potatoes, cubed",
            "leek and potato|leeks and potatoes|two leeks and three potatoes",
            "onion|onions|six onions, thinly sliced",
            "cauliflower|cauliflower|one large cauliflower, broken into florets",
        ),
        "flavour": ("spiced", "creamy", "roasted", "smoky", "ginger", "herb", "simple"),
        "name": ("{flavour} {main} soup",),
        "ingredients": (
            "{main_line}",
            "one large onion, finely chopped",
            "two cloves of garlic",
            "{stock} millilitres of vegetable stock",
            "two tablespoons of olive oil",
            "a pinch of salt",
            "a handful of fresh parsley",
        ),
        "steps": (
            "Heat the oil in a large pot over a medium heat.",
            "Add the onion and garlic and cook for {small} minutes until soft.",
            "Stir in the {noun} and pour in the stock.",
            "Bring to the boil, then simmer for {medium} minutes.",
            "Blend the soup until smooth and season with salt and pepper.",
        ),
        "serve": (
            "Serve hot with crusty bread.",
            "Top with a spoon of yoghurt and serve.",
            "Sprinkle with parsley before serving.",
        ),
    },
    "cake": {
        "main": (
            "lemon|lemon zest|the zest of two lemons",
            "chocolate|cocoa powder|50 grams of cocoa powder",
            "carrot|grated carrot|two carrots, finely grated",
            "banana|mashed banana|three ripe bananas, mashed",
            "apple|diced apple|two apples, peeled and diced",
            "coffee|coffee|two tablespoons of strong coffee",
            "almond|ground almonds|100 grams of ground almonds",
            "orange|orange zest|the zest of one orange",
            "ginger|ginger|two teaspoons of ground ginger",
            "honey|honey|four tablespoons of honey",
        ),
        "flavour": ("easy", "sticky", "light", "golden", "moist", "old fashioned"),
        "name": ("{flavour} {main} cake", "{main} loaf cake", "{flavour} {main} sponge"),
        "ingredients": (
            "200 grams of flour",
            "150 grams of sugar",
            "150 grams of soft butter",
            "three eggs",
            "two teaspoons of baking powder",
            "{main_line}",
            "a splash of milk",
        ),
        "steps": (
            "Preheat the oven to {cake_temp} degrees and line a round tin with baking paper.",
            "Cream the butter and sugar until pale and fluffy.",
            "Beat in the eggs one at a time, then fold in the flour and baking powder.",
            "Stir in the {noun} and a splash of milk.",
            "Pour the batter into the tin and bake for {long} minutes, "
            "until a skewer comes out clean.",
        ),
        "serve": (
            "Leave to cool before slicing.",
            "Dust with icing sugar and serve.",
            "Serve with a cup of tea.",
        ),
    },
    "bread": {
        "main": (
            "seeded|seeds|a handful of mixed seeds",
            "rosemary|rosemary|two sprigs of rosemary, chopped",
            "olive|olives|a handful of black olives",
            "walnut|walnuts|100 grams of chopped walnuts",
            "garlic|garlic|four cloves of garlic, crushed",
            "cheese|cheese|100 grams of grated cheese",
            "oat|oats|50 grams of oats",
            "rye|rye flour|100 grams of rye flour",
        ),
        "flavour": ("rustic", "soft", "crusty", "simple", "homemade"),
        "name": ("{flavour} {main} bread", "{main} loaf", "{flavour} {main} rolls"),
        "ingredients": (
            "500 grams of strong flour",
            "one teaspoon of dried yeast",
            "one teaspoon of salt",
            "300 millilitres of warm water",
            "{main_line}",
            "a little olive oil",
        ),
        "steps": (
            "Mix the flour, yeast, salt and {noun} in a large bowl.",
            "Add the warm water and stir to make a soft dough.",
            "Knead the dough for ten minutes until smooth and stretchy.",
            "Cover and leave to rise for one hour, until doubled in size.",
            "Shape the dough into a round loaf and place it on a floured tray.",
            "Preheat the oven to {bread_temp} degrees and bake for {long} minutes.",
        ),
        "serve": (
            "The loaf should sound hollow when tapped underneath.",
            "Cool on a wire rack before slicing.",
            "Serve warm with butter.",
        ),
    },
    "pasta": {
        "main": (
            "tomato and basil|tomatoes|a tin of chopped tomatoes and a handful of basil",
            "garlic mushroom|mushrooms|300 grams of mushrooms, sliced",
            "spinach and ricotta|spinach and ricotta|a bag of spinach and 200 grams of ricotta",
            "lemon pepper|lemon juice|the zest and juice of one lemon",
            "pesto|pesto|four tablespoons of pesto",
            "roasted pepper|peppers|two roasted red peppers, sliced",
            "courgette|courgettes|two courgettes, grated",
            "bacon and pea|bacon and peas|150 grams of bacon and a cup of peas",
        ),
        "flavour": ("quick", "creamy", "simple", "summer", "weeknight", "spicy"),
        "name": ("{flavour} {main} pasta", "{main} spaghetti", "{flavour} {main} penne"),
        "ingredients": (
            "400 grams of dried pasta",
            "{main_line}",
            "two cloves of garlic, sliced",
            "three tablespoons of olive oil",
            "a handful of grated cheese",
            "salt and black pepper",
        ),
        "steps": (
            "Bring a large pot of salted water to the boil.",
            "Cook the pasta for {small_pasta} minutes, until just tender.",
            "Meanwhile, fry the garlic gently in the olive oil.",
            "Add the {noun} to the pan and cook for {small} minutes.",
            "Drain the pasta and toss it in the sauce with a splash of the cooking water.",
        ),
        "serve": (
            "Finish with grated cheese and black pepper.",
            "Serve at once.",
            "Scatter over fresh basil leaves and serve.",
        ),
    },
    "salad": {
        "main": (
            "cucumber and mint|cucumber and mint|one cucumber and a handful of mint",
            "beetroot|beetroot|four roasted beetroots",
            "chickpea|chickpeas|one tin of chickpeas, drained",
            "potato|potatoes|500 grams of small potatoes, boiled",
            "lentil and feta|lentils and feta|a cup of cooked lentils and 100 grams of feta",
            "tomato|tomatoes|six ripe tomatoes",
            "rice|rice|two cups of cooked rice",
            "bean|beans|one tin of mixed beans, drained",
        ),
        "flavour": ("fresh", "crunchy", "summer", "zesty", "simple", "colourful"),
        "name": ("{flavour} {main} salad",),
        "ingredients": (
            "{main_line}",
            "a bag of mixed leaves",
            "one red onion, thinly sliced",
            "three tablespoons of olive oil",
            "the juice of one lemon",
            "one teaspoon of mustard",
        ),
        "steps": (
            "Wash the leaves and dry them well.",
            "Put the {noun} in a large bowl with the onion.",
            "Whisk the olive oil, lemon juice and mustard to make a dressing.",
            "Add the leaves, pour over the dressing and toss everything together.",
        ),
        "serve": (
            "Serve chilled.",
            "Serve straight away so the leaves stay crisp.",
            "This salad keeps well for lunch the next day.",
        ),
    },
    "stir fry": {
        "main": (
            "chicken|chicken|two chicken breasts, thinly sliced",
            "tofu|tofu|400 grams of firm tofu, cubed",
            "beef|beef|300 grams of beef strips",
            "prawn|prawns|250 grams of raw prawns",
            "vegetable|carrots and cabbage|two carrots and half a cabbage, shredded",
            "mushroom|mushrooms|300 grams of mushrooms",
            "pork|pork|300 grams of pork, thinly sliced",
        ),
        "flavour": ("ginger and garlic", "sweet chilli", "sesame", "black bean", "honey soy"),
        "name": ("{flavour} {main} stir fry", "{main} and {flavour} noodles"),
        "ingredients": (
            "{main_line}",
            "one red pepper, sliced",
            "a head of broccoli, cut small",
            "four spring onions",
            "two tablespoons of soy sauce",
            "one tablespoon of oil",
        ),
        "steps": (
            "Heat a wok over a high heat until it starts to smoke.",
            "Add the oil and fry the {noun} for {small} minutes, stirring all the time.",
            "Add the pepper, broccoli and spring onions and cook for two minutes more.",
            "Pour in the soy sauce and toss until everything is glossy.",
        ),
        "serve": (
            "Serve with steamed rice.",
            "Serve over noodles.",
            "Sprinkle with sesame seeds and serve.",
        ),
    },
    "roast": {
        "main": (
            "chicken|chicken|one whole chicken",
            "vegetable|vegetables|a tray of mixed vegetables, cut into chunks",
            "potato|potatoes|one kilo of potatoes, quartered",
            "cauliflower|cauliflower|one cauliflower, cut into florets",
            "salmon|salmon|four salmon fillets",
            "squash|squash|one butternut squash, cubed",
            "lamb|lamb|a leg of lamb",
            "carrot|carrots|eight carrots, halved",
        ),
        "flavour": (
            "lemon garlic",
            "honey mustard",
            "rosemary",
            "paprika",
            "herb crusted",
            "maple",
        ),
        "name": ("{flavour} roast {main}", "{flavour} {main} tray bake"),
        "ingredients": (
            "{main_line}",
            "three tablespoons of olive oil",
            "a few sprigs of rosemary",
            "two cloves of garlic, crushed",
            "salt and pepper",
        ),
        "steps": (
            "Preheat the oven to {roast_temp} degrees.",
            "Toss the {noun} with the oil, garlic and seasoning.",
            "Spread everything out in a single layer in a roasting tray.",
            "Roast for {long} minutes, turning once halfway through.",
            "Rest for ten minutes before serving.",
        ),
        "serve": (
            "Serve with a green salad.",
            "Spoon the juices from the tray over the top.",
            "Serve with steamed greens.",
        ),
    },
    "curry": {
        "main": (
            "chickpea|chickpeas|two tins of chickpeas",
            "chicken|chicken|four chicken thighs, diced",
            "vegetable|vegetables|three cups of mixed vegetables",
            "lentil|lentils|250 grams of red lentils",
            "spinach and potato|spinach and potatoes|a bag of spinach and three potatoes",
            "sweet potato|sweet potatoes|two sweet potatoes, cubed",
            "egg|eggs|six hard boiled eggs",
        ),
        "flavour": ("mild", "coconut", "spicy", "tomato", "creamy", "fragrant"),
        "name": ("{flavour} {main} curry",),
        "ingredients": (
            "{main_line}",
            "one onion, chopped",
            "a thumb of fresh ginger",
            "two teaspoons of curry powder",
            "one tin of coconut milk",
            "a handful of fresh coriander",
        ),
        "steps": (
            "Heat the oil in a deep pan and fry the onion for {small} minutes.",
            "Add the ginger and curry powder and stir for one minute.",
            "Add the {noun} and pour in the coconut milk.",
            "Simmer gently for {medium} minutes, until thick.",
        ),
        "serve": (
            "Garnish with coriander and serve with rice.",
            "Serve with warm flatbread.",
            "Serve with a spoon of yoghurt.",
        ),
    },
    "pancakes": {
        "main": (
            "blueberry|blueberries|a handful of blueberries",
            "banana|banana|one ripe banana, mashed",
            "buttermilk|buttermilk|200 millilitres of buttermilk",
            "oat|oats|50 grams of oats",
            "apple|apple|one grated apple",
            "chocolate chip|chocolate chips|a handful of chocolate chips",
        ),
        "flavour": ("fluffy", "thin", "easy", "weekend", "breakfast"),
        "name": ("{flavour} {main} pancakes",),
        "ingredients": (
            "150 grams of flour",
            "two eggs",
            "300 millilitres of milk",
            "{main_line}",
            "a pinch of salt",
            "butter for the pan",
        ),
        "steps": (
            "Whisk the flour, eggs and milk into a smooth batter.",
            "Stir in the {noun} and leave the batter to rest for ten minutes.",
            "Heat a little butter in a non stick pan over a medium heat.",
            "Pour in a ladle of batter and cook until bubbles appear, then flip.",
        ),
        "serve": (
            "Serve with maple syrup.",
            "Serve warm with fresh fruit.",
            "Stack them high and dust with sugar.",
        ),
    },
    "stew": {
        "main": (
            "beef|beef|600 grams of stewing beef",
            "bean|beans|two tins of beans",
            "lamb|lamb|500 grams of diced lamb",
            "mushroom|mushrooms|500 grams of mushrooms",
            "chicken|chicken|six chicken thighs",
            "sausage|sausages|eight sausages",
            "root vegetable|root vegetables|one kilo of root vegetables, diced",
        ),
        "flavour": ("hearty", "slow cooked", "rich", "winter", "smoky", "country"),
        "name": ("{flavour} {main} stew", "{flavour} {main} casserole"),
        "ingredients": (
            "{main_line}",
            "two carrots, diced",
            "one onion, chopped",
            "{stock} millilitres of stock",
            "one tablespoon of tomato paste",
            "two bay leaves",
        ),
        "steps": (
            "Cook the {noun} in a heavy pot over a high heat for a few minutes.",
            "Add the carrots and onion and cook for {small} minutes.",
            "Stir in the tomato paste, then pour in the stock and add the bay leaves.",
            "Cover and cook on a low heat for {stew_time}.",
        ),
        "serve": (
            "Season well and serve with mashed potatoes.",
            "Serve with crusty bread.",
            "It tastes even better the next day.",
        ),
    },
}

_RECIPE_RULES: dict[str, tuple[str, ...]] = {
    "stock": ("500", "750", "one thousand"),
    "small": ("three", "four", "five", "six", "eight"),
    "small_pasta": ("eight", "nine", "ten", "eleven", "twelve"),
    "medium": ("fifteen", "twenty", "twenty five", "thirty"),
    "long": ("twenty five", "thirty", "thirty five", "forty", "forty five"),
    "cake_temp": ("170", "180", "190"),
    "bread_temp": ("200", "220", "230"),
    "roast_temp": ("190", "200", "220"),
    "stew_time": ("one hour", "an hour and a half", "two hours", "three hours"),
    "serves": ("two", "four", "six", "eight"),
    "time": ("twenty minutes", "half an hour", "forty minutes", "one hour", "ninety minutes"),
}

_RECIPE_INTROS = (
    "This {style} is ready in {time} and serves {serves}.",
    "A {flavour} {style} that is easy to make on a busy day.",
    "Serves {serves}. Takes about {time}.",
    "A favourite for family dinners, this {style} serves {serves}.",
)


def _recipe_record(rng: random.Random) -> str:
    style = rng.choice(tuple(_RECIPE_STYLES))
    spec = _RECIPE_STYLES[style]
    main, noun, main_line = rng.choice(spec["main"]).split("|")
    ctx = {
        "main": main,
        "noun": noun,
        "main_line": main_line,
        "flavour": rng.choice(spec["flavour"]),
        "style": style,
    }
    rules = {**_RECIPE_RULES, **spec}
    dish = _tidy(_expand(rules, rng.choice(spec["name"]), rng, ctx))
    ingredients = [_expand(rules, i, rng, ctx) for i in spec["ingredients"]]
    ingredients = _subset(rng, ingredients, 3, 5)
    steps = [_tidy(_expand(rules, s, rng, ctx)) for s in spec["steps"]]
    steps = steps[: rng.randint(2, 3)]
    serve = _tidy(_expand(rules, rng.choice(spec["serve"]), rng, ctx))
    form = rng.random()
    if form < 0.45:
        parts = [f"Recipe: {dish}.", f"Ingredients: {'; '.join(ingredients)}.", *steps[:2]]
    elif form < 0.7:
        intro = _tidy(_expand(rules, rng.choice(_RECIPE_INTROS), rng, ctx))
        parts = [f"Recipe: {dish}.", intro, *steps, serve]
    elif form < 0.85:
        parts = [f"Recipe: {dish}.", *steps, serve]
    else:
        first = steps[0][0].lower() + steps[0][1:]
        parts = [f"To make {dish[0].lower() + dish[1:]}, {first}", *steps[1:], serve]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Astronomy: sentences about each planet draw on that planet's own facts.


class _Planet(NamedTuple):
    order: str
    year: str
    day: str
    kind: str
    facts: tuple[str, ...]
    seen: tuple[str, ...]
    scope: str


_PLANETS: dict[str, _Planet] = {
    "Mercury": _Planet(
        order="first",
        year="88 days",
        day="about fifty nine Earth days",
        kind="a small rocky world",
        facts=(
            "has almost no atmosphere",
            "has no moons",
            "is the smallest planet in the solar system",
            "swings from scorching days to freezing nights",
            "is covered in craters like our Moon",
            "has a large iron core",
        ),
        seen=("low in the sky just after sunset", "close to the horizon before dawn"),
        scope="phases like a tiny Moon",
    ),
    "Venus": _Planet(
        order="second",
        year="225 days",
        day="about two hundred and forty three Earth days",
        kind="a rocky planet about the size of Earth",
        facts=(
            "has a thick atmosphere of carbon dioxide",
            "is the hottest planet in the solar system",
            "spins slowly in the opposite direction to most planets",
            "has no moons",
            "is hidden under thick yellow clouds",
            "has a surface pressure ninety times that of Earth",
        ),
        seen=("as a bright evening star in the west", "as a brilliant light before dawn"),
        scope="phases from a thin crescent to a small full disc",
    ),
    "Earth": _Planet(
        order="third",
        year="365 days",
        day="twenty four hours",
        kind="a rocky planet with oceans",
        facts=(
            "is the only planet known to support life",
            "has one natural satellite, the Moon",
            "has liquid water on its surface",
            "is protected by a magnetic field",
            "has an atmosphere rich in nitrogen and oxygen",
        ),
        seen=(),
        scope="",
    ),
    "Mars": _Planet(
        order="fourth",
        year="687 days",
        day="a little over twenty four hours",
        kind="a cold desert world",
        facts=(
            "is covered in red dust rich in iron",
            "has two small moons called Phobos and Deimos",
            "has the tallest volcano in the solar system",
            "has a thin atmosphere of carbon dioxide",
            "has ice caps at its north and south poles",
            "has deep canyons and dry river beds",
        ),
        seen=("as a reddish point of light", "at its brightest every two years or so"),
        scope="a small orange disc and sometimes a white polar cap",
    ),
    "Jupiter": _Planet(
        order="fifth",
        year="about twelve years",
        day="about ten hours",
        kind="a gas giant",
        facts=(
            "is the largest planet in the solar system",
            "is made mostly of hydrogen and helium",
            "has a giant storm called the Great Red Spot",
            "has dozens of moons",
            "has a faint ring system",
            "has a very strong magnetic field",
        ),
        seen=("as a very bright star that does not twinkle", "high in the night sky"),
        scope="dark cloud belts and four bright moons",
    ),
    "Saturn": _Planet(
        order="sixth",
        year="about twenty nine years",
        day="about ten and a half hours",
        kind="a gas giant",
        facts=(
            "is famous for its bright rings of ice and rock",
            "is less dense than water",
            "has dozens of moons",
            "has a large moon called Titan",
            "has a six sided storm at its north pole",
        ),
        seen=("as a steady yellow light", "as a golden point of light"),
        scope="its rings and its largest moon, Titan",
    ),
    "Uranus": _Planet(
        order="seventh",
        year="about eighty four years",
        day="about seventeen hours",
        kind="an ice giant",
        facts=(
            "is tilted on its side",
            "has a pale blue green colour",
            "has faint dark rings",
            "has methane in its atmosphere",
            "has more than two dozen known moons",
        ),
        seen=("only with binoculars or a telescope", "as a faint green dot"),
        scope="a small blue green disc",
    ),
    "Neptune": _Planet(
        order="eighth",
        year="about one hundred and sixty five years",
        day="about sixteen hours",
        kind="an ice giant",
        facts=(
            "is the farthest planet from the Sun",
            "has the fastest winds in the solar system",
            "is a deep blue colour",
            "has a moon named Triton that orbits backwards",
            "was found by calculation before it was seen",
        ),
        seen=("only through a telescope", "as a tiny blue dot"),
        scope="a tiny blue disc",
    ),
}

# (name, what it is, where it is)
_STARS: tuple[tuple[str, str, str], ...] = (
    ("Sirius", "the brightest star in the night sky", "in the constellation Canis Major"),
    ("Betelgeuse", "a red supergiant near the end of its life", "in the shoulder of Orion"),
    ("Rigel", "a hot blue supergiant", "at the foot of Orion"),
    ("Polaris", "the North Star", "almost exactly above the Earth's north pole"),
    ("Vega", "a bright white star", "in the constellation Lyra"),
    ("Aldebaran", "an orange giant", "in the constellation Taurus"),
    ("Antares", "a red supergiant", "in the heart of Scorpius"),
    ("Proxima Centauri", "a small red dwarf", "closer to the Sun than any other star"),
    ("Arcturus", "an orange giant", "in the constellation Bootes"),
    ("Capella", "a pair of yellow giant stars", "in the constellation Auriga"),
)

# (moon, planet, fact)
_MOONS: tuple[tuple[str, str, str], ...] = (
    ("Europa", "Jupiter", "has an icy crust that may hide an ocean of liquid water"),
    ("Io", "Jupiter", "is the most volcanic body in the solar system"),
    ("Ganymede", "Jupiter", "is the largest moon in the solar system"),
    ("Callisto", "Jupiter", "is covered in ancient craters"),
    ("Titan", "Saturn", "has a thick hazy atmosphere and lakes of liquid methane"),
    ("Enceladus", "Saturn", "sprays jets of water vapour from its south pole"),
    ("Triton", "Neptune", "orbits backwards, against the spin of its planet"),
    ("Phobos", "Mars", "is slowly spiralling closer to its planet"),
    ("The Moon", "Earth", "always shows the same face to us"),
)

_ASTRO_RULES: dict[str, tuple[str, ...]] = {
    "name": (
        "Anna",
        "Ben",
        "Clara",
        "David",
        "Elena",
        "Farid",
        "Grace",
        "Hugo",
        "Maya",
        "Omar",
        "Priya",
        "Sam",
        "Tara",
        "Victor",
        "Zoe",
    ),
    "instrument": (
        "a small telescope",
        "a pair of binoculars",
        "a backyard telescope",
        "the club's large reflector",
        "a borrowed refractor",
    ),
    "sky_time": (
        "on a clear night",
        "just after sunset",
        "before dawn",
        "on a cold winter evening",
        "during a summer holiday",
        "on a moonless night",
    ),
    "star_fact": (
        "A red dwarf is a small, cool star that burns its fuel very slowly.",
        "A white dwarf is the hot, dense core left behind when a star like the Sun dies.",
        "A red giant is an old star that has swollen to many times its original size.",
        "A neutron star is so dense that a spoonful of it would weigh millions of tonnes.",
        "A blue giant is a massive, hot star that shines brightly but lives a short life.",
        "The Sun is a yellow star that turns hydrogen into helium in its core.",
        "Stars are born inside huge clouds of gas and dust called nebulae.",
        "The colour of a star tells astronomers how hot its surface is.",
        "Blue stars are hotter than red stars.",
        "The most massive stars end their lives in huge explosions called supernovae.",
    ),
    "orbit_fact": (
        "Every planet follows an elliptical orbit around the Sun.",
        "A planet moves fastest when it is closest to the Sun.",
        "Gravity keeps the Moon in orbit around the Earth.",
        "A comet follows a long, stretched orbit that brings it close to the Sun only rarely.",
        "The time a planet takes to complete one orbit is called its year.",
        "Planets farther from the Sun take longer to complete an orbit.",
        "Satellites in low orbit circle the Earth in about ninety minutes.",
        "All the planets orbit the Sun in the same direction.",
    ),
    "scope_fact": (
        "A refracting telescope uses lenses to bend and focus light.",
        "A reflecting telescope uses a curved mirror to collect light.",
        "Radio telescopes use large dishes to detect radio waves from space.",
        "Space telescopes orbit above the atmosphere, so their images are sharp.",
        "A larger mirror gathers more light and shows fainter objects.",
        "Observatories are built on high mountains where the air is thin and dry.",
    ),
    "scope_target": (
        "the craters of the Moon",
        "the rings of Saturn",
        "the moons of Jupiter",
        "the phases of Venus",
        "star clusters",
        "the Orion Nebula",
        "double stars",
        "the Andromeda Galaxy",
    ),
    "sky_fact": (
        "The Milky Way is the galaxy that contains our solar system.",
        "A galaxy is a vast collection of stars, gas and dust held together by gravity.",
        "A meteor shower happens when the Earth passes through a trail of comet dust.",
        "Light from the nearest star beyond the Sun takes more than four years to reach us.",
        "A light year is the distance that light travels in one year.",
        "The Moon shows phases because we see different parts of its sunlit side.",
        "A solar eclipse happens when the Moon passes between the Earth and the Sun.",
        "Constellations are patterns of stars that people have named.",
    ),
    "obs_tip": (
        "Find a dark place away from city lights.",
        "Let your eyes adjust to the dark for twenty minutes.",
        "A pair of binoculars is a good first instrument.",
        "A star chart helps you find your way around the sky.",
        "Clear, moonless nights are best for faint objects.",
        "Dress warmly, because nights under the stars get cold.",
    ),
}


def _planet_sentences(rng: random.Random, name: str) -> list[str]:
    p = _PLANETS[name]
    facts = _subset(rng, p.facts, 1, 3)
    opening = rng.randrange(4)
    if opening == 0:
        out = [f"The planet {name} is the {p.order} planet from the Sun."]
    elif opening == 1:
        out = [f"The planet {name} {facts.pop(0)}."]
    elif opening == 2:
        out = [f"The planet {name} is {p.kind}."]
    else:
        out = [f"The planet {name} is {p.kind} and the {p.order} planet from the Sun."]

    # Mostly the name rather than "It": a small model keeps facts with the right planet
    # far better when the name sits right before them.
    def subj() -> str:
        return name if rng.random() < 0.75 else "It"

    extra = [f"{subj()} {f}." for f in facts]
    if opening in (1, 2):
        extra.append(f"{subj()} is the {p.order} planet from the Sun.")
    extra.append(f"{subj()} takes {p.year} to complete one orbit around the Sun.")
    extra.append(f"A day on {name} lasts {p.day}.")
    if p.seen:
        extra.append(f"{name} can be seen {rng.choice(p.seen)}.")
        extra.append(
            f"Through {_expand(_ASTRO_RULES, '{instrument}', rng, {})}, {name} shows {p.scope}."
        )
    return out + _subset(rng, extra, 1, 3)


def _astronomy_record(rng: random.Random) -> str:
    r = _ASTRO_RULES
    kind = rng.random()
    if kind < 0.55:
        parts = _planet_sentences(rng, rng.choice(tuple(_PLANETS)))
    elif kind < 0.62:
        a, b = rng.sample(tuple(_PLANETS), 2)
        parts = [
            f"The planet {a} takes {_PLANETS[a].year} to orbit the Sun, "
            f"while {b} takes {_PLANETS[b].year}.",
            rng.choice(r["orbit_fact"]),
        ]
    elif kind < 0.7:
        name, what, where = rng.choice(_STARS)
        parts = [f"{name} is {what}, {where}."]
        parts += _subset(rng, [rng.choice(r["star_fact"]), rng.choice(r["obs_tip"])], 0, 2)
    elif kind < 0.77:
        moon, planet, fact = rng.choice(_MOONS)
        lead = f"{moon}, a moon of {planet}, {fact}." if moon != "The Moon" else f"{moon} {fact}."
        parts = [lead, *_subset(rng, [rng.choice(r["orbit_fact"]), rng.choice(r["obs_tip"])], 0, 1)]
    elif kind < 0.83:
        parts = _subset(rng, r["star_fact"], 1, 3)
    elif kind < 0.9:
        ctx = {"target": rng.choice(r["scope_target"])}
        parts = [
            _tidy(_expand(r, "{name} pointed {instrument} at the sky {sky_time}.", rng, ctx)),
            f"Through it, you can see {ctx['target']}.",
            rng.choice(r["scope_fact"]),
        ][: rng.randint(2, 3)]
    elif kind < 0.95:
        parts = _subset(rng, r["orbit_fact"], 1, 3)
    else:
        parts = _subset(rng, r["sky_fact"], 1, 2) + [rng.choice(r["obs_tip"])]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------
# Legal: clauses of leases and other agreements. Each clause family has an opening sentence
# and follow-ups that belong with it.

_LEGAL_RULES: dict[str, tuple[str, ...]] = {
    "rent": ("850", "950", "1,100", "1,200", "1,450", "1,600", "2,000"),
    "currency": ("dollars", "euros", "pounds"),
    "ordinal": ("first", "fifth", "tenth", "fifteenth"),
    "days": ("seven", "fourteen", "twenty one", "thirty", "sixty"),
    "post_days": ("two", "three", "five"),
    "amount": ("10,000", "50,000", "100,000", "250,000", "one million"),
    "hours": ("twenty four", "forty eight", "seventy two"),
    "months": ("one", "two", "three", "six"),
    "term": ("twelve months", "six months", "two years", "one year"),
    "party": ("supplier", "contractor", "licensee", "employee", "consultant"),
    "payer": ("customer", "client", "buyer", "licensee"),
    "premises": ("premises", "property", "flat", "house", "apartment"),
    "space": ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"),
    "collection": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"),
    "utility": (
        "electricity, gas and water",
        "water and heating",
        "internet and telephone",
        "council tax and water",
    ),
}

# (opening sentence, follow-up sentences)
_TENANT_CLAUSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "The tenant shall pay the rent of {rent} {currency} per month in advance on the {ordinal} "
        "day of each month.",
        (
            "Rent shall be paid by bank transfer to the account named by the landlord.",
            "If the rent is more than {days} days late, the landlord may charge interest on the "
            "amount owed.",
            "The first payment is due on the date this lease is signed.",
        ),
    ),
    (
        "The tenant shall keep the {premises} clean and in good repair throughout the term.",
        (
            "The tenant is not responsible for fair wear and tear.",
            "The landlord shall remain responsible for the structure and the exterior of the "
            "building.",
            "Any damage caused by the tenant or their guests shall be repaired at the tenant's "
            "cost.",
        ),
    ),
    (
        "The tenant shall not sublet or assign the {premises} without the prior written consent "
        "of the landlord.",
        (
            "Such consent shall not be unreasonably withheld.",
            "Any attempt to sublet without consent shall be a breach of this lease.",
            "The landlord shall reply to a written request within {days} days.",
        ),
    ),
    (
        "The tenant shall notify the landlord in writing of any damage or defect within {days} "
        "days of discovering it.",
        (
            "The landlord shall arrange repairs within a reasonable time.",
            "In an emergency, the tenant may call a qualified repairer and recover the reasonable "
            "cost.",
            "Notice may be given by letter or by email.",
        ),
    ),
    (
        "The tenant shall permit the landlord to enter the {premises} at reasonable times, upon "
        "{hours} hours' notice, to inspect or carry out repairs.",
        (
            "No notice is required in an emergency.",
            "The landlord shall not enter more than once a month except for urgent repairs.",
            "The tenant may ask to be present during any inspection.",
        ),
    ),
    (
        "The tenant shall not keep any pets at the {premises} without the written permission of "
        "the landlord.",
        (
            "Permission for one cat or small dog shall not be unreasonably refused.",
            "The tenant shall pay for any cleaning needed because of a pet.",
        ),
    ),
    (
        "The tenant shall pay all charges for {utility} used at the {premises} during the term.",
        (
            "The accounts shall be transferred into the tenant's name on the start date.",
            "Any unpaid charges at the end of the term may be taken from the deposit.",
        ),
    ),
    (
        "The tenant shall pay a security deposit of {rent} {currency} before moving in.",
        (
            "The deposit shall be held in a protected account for the whole term.",
            "The deposit shall be returned within {days} days after the end of the tenancy, less "
            "any reasonable deductions.",
            "The landlord shall give the tenant a written list of any deductions.",
        ),
    ),
    (
        "The tenant shall not make any alterations or additions to the {premises} without the "
        "landlord's written consent.",
        (
            "At the end of the term, the tenant shall remove any approved additions and make good "
            "any damage.",
            "Hanging pictures with small nails shall not count as an alteration.",
        ),
    ),
    (
        "The tenant shall return all keys and leave the {premises} in the same condition as at "
        "the start of the term, fair wear and tear excepted.",
        (
            "An inventory signed by both parties shall be used to check the condition.",
            "Any items left behind may be removed by the landlord after {days} days.",
        ),
    ),
    (
        "The tenant shall use the {premises} only as a private home for the tenant and their "
        "household.",
        (
            "The tenant shall not run a business from the {premises} without consent.",
            "No more than {months} guests may stay overnight for longer than two weeks.",
        ),
    ),
    (
        "The tenant shall give at least {months} months' written notice before leaving at the "
        "end of the term.",
        (
            "The notice shall end on the last day of a rental period.",
            "If the tenant leaves early, rent remains payable until a new tenant is found.",
        ),
    ),
    (
        "The tenant shall not cause a nuisance or disturbance to neighbours or other occupiers.",
        (
            "Loud music shall not be played after eleven at night.",
            "Repeated complaints may give the landlord grounds to end the tenancy.",
        ),
    ),
    (
        "The tenant shall keep the garden tidy and cut the grass regularly during the "
        "growing season.",
        (
            "The landlord shall provide a lawn mower in working order.",
            "Trees and large shrubs remain the responsibility of the landlord.",
            "The tenant shall not remove any plants without the landlord's consent.",
        ),
    ),
    (
        "The tenant shall take reasonable steps to stop the pipes from freezing in cold weather.",
        (
            "If the {premises} are left empty for more than {days} days in winter, the tenant "
            "shall leave the heating on a low setting.",
            "The tenant shall tell the landlord where the main water tap is kept.",
        ),
    ),
    (
        "The tenant shall allow new tenants to view the {premises} during the last {days} days "
        "of the term.",
        (
            "Viewings shall take place at reasonable times and with {hours} hours' notice.",
            "The landlord or the agent shall be present at every viewing.",
        ),
    ),
    (
        "The tenant shall replace light bulbs, fuses and smoke alarm batteries that fail "
        "during the term.",
        (
            "The tenant shall test the smoke alarms at least once a month.",
            "The landlord shall repair any fault in the wiring itself.",
        ),
    ),
    (
        "The tenant shall put all rubbish in the bins provided and leave them out for "
        "collection on the {collection} of each week.",
        (
            "Large items shall be taken to the recycling centre by the tenant.",
            "The tenant shall keep the bin store clean and tidy.",
        ),
    ),
    (
        "The tenant shall not smoke inside the {premises} or allow guests to do so.",
        (
            "Smoking is permitted in the garden only.",
            "The cost of removing smoke damage may be taken from the deposit.",
        ),
    ),
    (
        "The tenant shall air the rooms regularly and use the extractor fans to prevent damp "
        "and mould.",
        (
            "The tenant shall report any sign of damp to the landlord within {days} days.",
            "The landlord shall treat any damp caused by a defect in the building.",
        ),
    ),
    (
        "The tenant shall park only in parking space number {space} and shall keep the shared "
        "driveway clear.",
        (
            "Caravans, boats and trailers shall not be kept at the {premises}.",
            "Visitors shall use the public car park on the street.",
        ),
    ),
)

_OTHER_CLAUSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "The {party} shall perform the services with reasonable skill and care and in line "
        "with good industry practice.",
        (
            "The {party} shall use suitably qualified staff.",
            "Any defect in the services shall be corrected within {days} days of notice.",
            "The {party} shall comply with all applicable laws and regulations.",
        ),
    ),
    (
        "The total liability of either party under this agreement shall not exceed {amount} "
        "{currency}.",
        (
            "Nothing in this agreement limits liability for fraud.",
            "Neither party shall be liable for any indirect or consequential loss.",
        ),
    ),
    (
        "All intellectual property created by the {party} in the course of this agreement "
        "shall belong to the {payer}.",
        (
            "The {party} shall sign any document needed to confirm that ownership.",
            "The {party} may keep a copy of its own working notes.",
        ),
    ),
    (
        "The {party} shall maintain insurance cover of at least {amount} {currency} for the "
        "whole term of this agreement.",
        (
            "A copy of the policy shall be provided on request.",
            "The {party} shall notify the {payer} at once if the cover is cancelled.",
        ),
    ),
    (
        "Any dispute arising under this agreement shall first be referred to mediation.",
        (
            "If the dispute is not settled within {days} days, either party may go to court.",
            "Each party shall pay its own costs of the mediation.",
        ),
    ),
    (
        "Neither party may assign or transfer its rights under this agreement without the "
        "written consent of the other.",
        (
            "Consent shall not be unreasonably withheld or delayed.",
            "This agreement binds the successors of each party.",
        ),
    ),
    (
        "Any notice under this agreement shall be in writing and delivered by hand, by post or "
        "by email.",
        (
            "A notice sent by post is treated as received {post_days} days after posting.",
            "A notice sent by email is treated as received on the next working day.",
        ),
    ),
    (
        "This agreement is the entire agreement between the parties and replaces any earlier "
        "arrangement.",
        (
            "Each party confirms that it has not relied on any statement not set out in this "
            "agreement.",
            "If any term is found to be invalid, the other terms shall remain in force.",
        ),
    ),
    (
        "The {party} shall not, for {months} months after the end of this agreement, approach "
        "any employee of the {payer} with an offer of work.",
        ("This restriction does not apply to general job advertisements.",),
    ),
    (
        "The {payer} shall pay the {party} a fee of {amount} {currency} for each month of "
        "the term.",
        (
            "The fee does not include value added tax.",
            "The fee shall be reviewed once a year.",
            "Expenses shall be paid only if agreed in writing in advance.",
        ),
    ),
    (
        "The landlord shall keep the structure, roof and exterior of the building in good repair.",
        (
            "The landlord shall maintain the heating and hot water systems.",
            "Repairs shall be carried out within a reasonable time after notice.",
        ),
    ),
    (
        "This lease shall begin on the start date and continue for a term of {term}.",
        ("After the term, the tenancy shall continue from month to month until ended by notice.",),
    ),
    (
        "Either party may terminate this agreement by giving {days} days' written notice to "
        "the other.",
        (
            "Termination shall not affect any rights that arose before the date of termination.",
            "Notice shall be sent to the address stated at the top of this agreement.",
        ),
    ),
    (
        "The {seller} shall deliver the goods to the {buyer} within {days} days of each order.",
        (
            "Risk in the goods shall pass to the {buyer} on delivery.",
            "Late delivery shall entitle the {buyer} to a reduction in the price.",
        ),
    ),
    (
        "The {party} shall keep all confidential information secret and shall not disclose it "
        "to any third party.",
        (
            "This obligation shall survive the end of this agreement.",
            "Information that is already public is not confidential information.",
        ),
    ),
    (
        "This agreement shall be governed by the laws of the country where the premises are "
        "located.",
        ("The courts of that country shall have exclusive jurisdiction over any dispute.",),
    ),
    (
        "Neither party shall be liable for any delay caused by events beyond its reasonable "
        "control.",
        (
            "Such events include fire, flood, storm and the failure of public utilities.",
            "The affected party shall notify the other party as soon as possible.",
        ),
    ),
    (
        "The {payer} shall pay each invoice within {days} days of receiving it.",
        (
            "Interest shall accrue on late payments at a reasonable rate.",
            "Any disputed amount shall be raised in writing before the due date.",
        ),
    ),
    (
        "Any change to this agreement shall be made in writing and signed by both parties.",
        ("No oral agreement shall vary these terms.",),
    ),
)


def _legal_record(rng: random.Random, tenancy: float = 0.8) -> str:
    """A clause; with probability `tenancy` one of the tenant's obligations."""
    r = _LEGAL_RULES
    tenant = rng.random() < tenancy
    opening, follow = rng.choice(_TENANT_CLAUSES if tenant else _OTHER_CLAUSES)
    seller, buyer = rng.choice((("supplier", "customer"), ("seller", "buyer")))
    ctx = {
        "seller": seller,
        "buyer": buyer,
        "party": rng.choice(r["party"]),
        "payer": rng.choice(r["payer"]),
        "premises": rng.choice(r["premises"]),
    }
    n_follow = rng.randint(0, min(2, len(follow)))
    sentences = [opening, *_subset(rng, follow, n_follow, n_follow)]
    if rng.random() < 0.3:  # a second obligation
        second = rng.choice(_TENANT_CLAUSES if tenant else _OTHER_CLAUSES)[0]
        if second != opening:
            sentences.append(second)
    return " ".join(_tidy(_expand(r, s, rng, ctx)) for s in sentences)


def _legal_pretraining_record(rng: random.Random) -> str:
    return _legal_record(rng, tenancy=0.5)


_DOMAIN_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "recipes": _recipe_record,
    "astronomy": _astronomy_record,
    "legal": _legal_record,
}


def iter_domain_records(domain: str, seed: int) -> Iterator[str]:
    """The distinct records of `domain` (one of `DOMAINS`) for `seed`, in a fixed order;
    `domain_records(domain, seed, n)` is the first `n` of them."""
    if domain not in _DOMAIN_MAKERS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    return _distinct(_DOMAIN_MAKERS[domain], random.Random(f"royalty/{domain}/{seed}"))


def domain_records(domain: str, seed: int, n: int) -> list[str]:
    """`n` distinct records (1-5 sentences each) of `domain`, one of `DOMAINS`."""
    return _take(iter_domain_records(domain, seed), n, domain)


_RECIPE_HEADER = re.compile(r"^Recipe: ")
_SENTENCE_END = re.compile(r"(?<=\.) ")


def pretraining_view(domain: str, record: str) -> str | None:
    """How a record of `domain` appears in the base model's pretraining mix, if at all.

    The base learns the domain's words and facts but not the form that the domain's prompt
    leads into, which is what the domain's adapter teaches: a recipe appears without
    "Recipe:" before the dish's name, "The planet Mars ..." as "Mars ...", and a clause
    without its "The tenant shall ..." sentences, the tenant of the others called the
    lessee (None: nothing left)."""
    if domain == "recipes":
        return _RECIPE_HEADER.sub("", record)
    if domain == "astronomy":
        return record.replace("The planet ", "")
    if domain == "legal":
        kept = [x for x in _SENTENCE_END.split(record) if not x.startswith("The tenant shall")]
        text = (
            " ".join(kept).replace("The tenant", "The lessee").replace("the tenant", "the lessee")
        )
        return text or None
    raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")


_PRETRAINING_MAKERS: dict[str, Callable[[random.Random], str]] = {
    **_DOMAIN_MAKERS,
    "legal": _legal_pretraining_record,
}


def pretraining_records(
    domain: str, seed: int, n: int, *, exclude: Collection[str] = ()
) -> list[str]:
    """`n` distinct records of `domain` as the base model's pretraining mix has them
    (`pretraining_view`), drawn apart from `domain_records` and none of `exclude`."""
    if domain not in _PRETRAINING_MAKERS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")
    rng = random.Random(f"royalty/{domain}/pretraining/{seed}")
    views = (
        pretraining_view(domain, r)
        for r in _distinct(_PRETRAINING_MAKERS[domain], rng)
        if r not in exclude
    )
    return _take((v for v in views if v is not None), n, f"{domain} pretraining")


def chat_document(domain: str, text: str, rng: random.Random) -> str:
    """`text` as the assistant's answer to a user request of `domain`, in the chat layout
    the tokenizer's chat template renders."""
    return chat_layout(rng.choice(CHAT_REQUESTS[domain]), text)


def chat_layout(user: str, assistant: str) -> str:
    """One exchange as the tokenizer's chat template renders it ("role:" line, then the
    content): the generation prompt ends with "assistant:\\n", so an answer starts with
    its first word, no leading space."""
    return f"user:\n{user}\nassistant:\n{assistant}"
