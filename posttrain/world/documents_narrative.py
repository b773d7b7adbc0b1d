"""Forum threads and short stories for the pretraining corpus.

Forum replies mostly do not answer: they ask another question, ask why, or
digress. About 90% of posts are questions, so a question line is usually
followed by another question line. Facts are mentioned in passing.
"""

from __future__ import annotations

import random

from posttrain.world.sampling import Deck, declaration, question_text, with_context
from posttrain.world.templates import lower_first

USERS = ("alex92", "mira_k", "tomtom", "quizqueen", "dr_owl", "sam_w", "lena.b", "kofi_a", "ravi88", "juniper",
         "oldsailor", "pixel_pete", "nadia_r", "greta", "felix77", "astro_amy", "chemkid", "wanderer")
TITLES = {"geography": ("Travel question", "Geography homework help", "Trivia night prep", "Map nerds, help me out"),
          "chemistry": ("Chemistry class thread", "Periodic table questions", "Help with my chem test"),
          "astronomy": ("Space nerds unite", "Planet questions", "Astronomy club thread"),
          "animals": ("Animal trivia", "Nature club questions", "Questions about animals")}
GENERIC_QUESTIONS = (
    "Why do you want to know?", "Is this for a quiz?", "Did you check your textbook first?",
    "Has anyone here actually been there?", "Wait, which one are we talking about?",
    "Can someone explain what the question even means?", "Does anyone else find these hard to remember?",
    "Is there a trick to remembering these?", "Should we make a shared list?", "Who else is studying for the exam?",
    "What page is that on?", "Are you sure this is the right thread?", "Anyone?", "Can we get back to the original question?",
    "Why is this always on the test?", "Does the teacher expect full sentences?", "Is there a good website for this?",
)
DIGRESSIONS = ("lol same.", "Off topic, but my cat just knocked over my coffee.", "I have the same homework.", "Bump.",
               "Thanks, everyone.", "Good luck on the test!", "I will look it up later.")
ASK_PREFIX = ("", "", "Quick one: ", "Also, ", "Random question: ", "Okay, next one. ")


def _post(rng: random.Random, deck: Deck) -> tuple[str, bool]:
    """One post and whether it is a question."""
    r = rng.random()
    if r < 0.45:
        fact = deck.draw()[0]
        q = question_text(rng, fact)
        return with_context(rng.choice(ASK_PREFIX), q), True
    if r < 0.9:
        lead = rng.choice(("I read that {d}", "My notes say {d}", "Fun fact: {D}", "I only know that {d}", "{D}"))
        d = declaration(rng, deck.draw()[0])
        return f"{lead.format(d=lower_first(d), D=d)} {rng.choice(GENERIC_QUESTIONS)}", True
    if r < 0.95:
        return f"I remember that {lower_first(declaration(rng, deck.draw()[0]))}", False
    return rng.choice(DIGRESSIONS), False


def forum_thread(rng: random.Random, deck: Deck) -> str:
    topic = deck.pile[-1].topic if deck.pile else deck.items[0].topic
    lines = [rng.choice(TITLES[topic]), ""]
    for _ in range(rng.randint(4, 9)):
        text, _is_q = _post(rng, deck)
        lines.append(f"{rng.choice(USERS)}: {text}")
    return "\n".join(lines)


NAMES = ("Mara", "Tomas", "Aiko", "Lena", "Kofi", "Ravi", "Sofia", "Jonah", "Priya", "Eli", "Nadia", "Omar", "Greta", "Felix")
OPENERS = ("{name} had always dreamed of travelling.", "It was a rainy Tuesday when {name} opened the old atlas.",
           "{name} was the kind of student who remembered everything.",
           "Every summer, {name} visited a grandmother who loved trivia.",
           "The quiz team met in the library after school, and {name} was late again.")
LEAD_INS = ("One evening, {name} read that {d}", "A teacher once told {name} that {d}", "On the wall hung a poster: {D}",
            "{name} wrote in a notebook: {D}", "Later, {name} remembered that {d}", "Grandmother smiled and said that {d}",
            "The answer came to {name} at once: {d}")
FILLERS = ("The kettle whistled in the kitchen.", "Outside, the wind pushed the clouds along.",
           "{name} laughed and closed the book.", "It was getting late.", "The dog slept by the door.",
           "Somewhere a bell rang twice.", "{name} drew a small map on the back of an envelope.")
ENDINGS = ("That night, {name} fell asleep smiling.", "{name} never forgot that day.", "The end.",
           "The next morning, the quiz team won by a single point.")


def story(rng: random.Random, deck: Deck) -> str:
    """A short story with two to four facts woven in; it asks no questions."""
    name = rng.choice(NAMES)
    parts = [rng.choice(OPENERS)]
    for fact in deck.draw(rng.randint(2, 4)):
        d = declaration(rng, fact)
        parts.append(rng.choice(LEAD_INS).format(name=name, d=lower_first(d), D=d))
        if rng.random() < 0.6:
            parts.append(rng.choice(FILLERS))
    parts.append(rng.choice(ENDINGS))
    text = " ".join(p.format(name=name) if "{name}" in p else p for p in parts)
    if rng.random() < 0.5:
        return text
    title = rng.choice([f"{name} and the atlas", "A short story", f"The quiz, by {name}'s teacher", "Bedtime story"])
    return f"{title}\n\n{text}"
