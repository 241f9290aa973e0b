"""Topics of the general corpus about what people buy, like and look after: each topic's
sentence templates ("s"), chat questions ("q") and word lists, in the grammar of
`factory.corpus.grammar`. The order of the topics is part of the corpus (see `general`)."""

from __future__ import annotations

__all__ = ["INTEREST_TOPICS"]

INTEREST_TOPICS: dict[str, dict[str, tuple[str, ...]]] = {
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
