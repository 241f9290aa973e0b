"""Recipes: a dish is a cooking style plus a main ingredient and a flavour; the ingredient
list and the method follow from the style, so every record is internally consistent."""

from __future__ import annotations

import random

from factory.corpus.grammar import expand, subset, tidy

__all__ = ["recipe_record"]

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


def recipe_record(rng: random.Random) -> str:
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
    dish = tidy(expand(rules, rng.choice(spec["name"]), rng, ctx))
    ingredients = [expand(rules, i, rng, ctx) for i in spec["ingredients"]]
    ingredients = subset(rng, ingredients, 3, 5)
    steps = [tidy(expand(rules, s, rng, ctx)) for s in spec["steps"]]
    steps = steps[: rng.randint(2, 3)]
    serve = tidy(expand(rules, rng.choice(spec["serve"]), rng, ctx))
    form = rng.random()
    if form < 0.45:
        parts = [f"Recipe: {dish}.", f"Ingredients: {'; '.join(ingredients)}.", *steps[:2]]
    elif form < 0.7:
        intro = tidy(expand(rules, rng.choice(_RECIPE_INTROS), rng, ctx))
        parts = [f"Recipe: {dish}.", intro, *steps, serve]
    elif form < 0.85:
        parts = [f"Recipe: {dish}.", *steps, serve]
    else:
        first = steps[0][0].lower() + steps[0][1:]
        parts = [f"To make {dish[0].lower() + dish[1:]}, {first}", *steps[1:], serve]
    return " ".join(parts)
