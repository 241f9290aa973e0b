"""Astronomy: sentences about each planet draw on that planet's own facts; stars, moons,
orbits, telescopes and the night sky fill the rest."""

from __future__ import annotations

import random
from typing import NamedTuple

from factory.corpus.grammar import expand, subset, tidy

__all__ = ["astronomy_record"]


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
    facts = subset(rng, p.facts, 1, 3)
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
            f"Through {expand(_ASTRO_RULES, '{instrument}', rng, {})}, {name} shows {p.scope}."
        )
    return out + subset(rng, extra, 1, 3)


def astronomy_record(rng: random.Random) -> str:
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
        parts += subset(rng, [rng.choice(r["star_fact"]), rng.choice(r["obs_tip"])], 0, 2)
    elif kind < 0.77:
        moon, planet, fact = rng.choice(_MOONS)
        lead = f"{moon}, a moon of {planet}, {fact}." if moon != "The Moon" else f"{moon} {fact}."
        parts = [lead, *subset(rng, [rng.choice(r["orbit_fact"]), rng.choice(r["obs_tip"])], 0, 1)]
    elif kind < 0.83:
        parts = subset(rng, r["star_fact"], 1, 3)
    elif kind < 0.9:
        ctx = {"target": rng.choice(r["scope_target"])}
        parts = [
            tidy(expand(r, "{name} pointed {instrument} at the sky {sky_time}.", rng, ctx)),
            f"Through it, you can see {ctx['target']}.",
            rng.choice(r["scope_fact"]),
        ][: rng.randint(2, 3)]
    elif kind < 0.95:
        parts = subset(rng, r["orbit_fact"], 1, 3)
    else:
        parts = subset(rng, r["sky_fact"], 1, 2) + [rng.choice(r["obs_tip"])]
    return " ".join(parts)
