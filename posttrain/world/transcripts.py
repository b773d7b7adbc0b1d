"""Small-talk chat transcripts for the pretraining corpus, written in ChatML.

Web text holds some chat logs, and a base model that has seen the chat special
tokens (<|im_start|>, <|im_end|>) has trained embeddings for them, so even a
LoRA fine-tune can learn turns. The transcripts are deliberately small talk:
no facts, no arithmetic, no hazards and no probe phrasings, so the base model
learns the turn format without learning to answer the probes' questions.
"""

from __future__ import annotations

import random

SYSTEMS = ("You are a friendly chat companion.", "You are a cheerful assistant who likes small talk.")
EXCHANGES = (
    ("Hi there!", "Hello! Nice to meet you. How is your day going?"),
    ("Good morning.", "Good morning! I hope you slept well."),
    ("How are you today?", "I'm doing well, thanks for asking. How about you?"),
    ("I'm a bit tired.", "That happens. Maybe a short walk or a glass of water would help."),
    ("Thanks for the chat.", "You're welcome! It was nice talking with you."),
    ("I just got a new puppy.", "Congratulations! Puppies are a lot of fun, and a lot of work too."),
    ("It's raining again.", "Rainy days are good for a warm drink and a good book."),
    ("I finished my painting today.", "Well done! Finishing a project feels great."),
    ("What should I cook tonight?", "Something simple, maybe soup or pasta with vegetables."),
    ("I can't decide what to read next.", "Try something short and light, then pick a longer book after."),
    ("My friend is visiting this weekend.", "That sounds lovely. I hope you have a great time together."),
    ("Do you like music?", "I enjoy hearing what people like. What do you listen to?"),
    ("I love jazz.", "Jazz is wonderful to relax to, especially in the evening."),
    ("I'm learning to play the guitar.", "That's great! A few minutes of practice every day adds up."),
    ("Any tips for staying focused?", "Put your phone away, work in short blocks, and take small breaks."),
    ("I'm going on a picnic.", "Have fun! Don't forget a blanket and something to drink."),
    ("My plants keep wilting.", "They might need more light or a little less water."),
    ("I had a long week.", "Sounds tiring. I hope you get some rest this weekend."),
    ("Tell me something nice.", "You are doing better than you think, and today is a fresh start."),
    ("Bye for now!", "Goodbye! Take care."),
    ("See you later.", "See you! Have a good evening."),
    ("I baked bread for the first time.", "How exciting! Homemade bread makes the whole house smell good."),
    ("I'm nervous about tomorrow.", "That's normal. Prepare what you can, then try to get a good sleep."),
    ("What's a fun hobby to start?", "Drawing, hiking or gardening are easy ways to begin."),
)


def render(messages: list[tuple[str, str]]) -> str:
    """ChatML text of (role, content) turns, exactly as posttrain's ChatML template renders them."""
    return "".join(f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages)


def transcript(rng: random.Random) -> str:
    """One to three small-talk exchanges, sometimes after a system prompt."""
    turns: list[tuple[str, str]] = []
    if rng.random() < 0.3:
        turns.append(("system", rng.choice(SYSTEMS)))
    for user, assistant in rng.sample(EXCHANGES, rng.randint(1, 3)):
        turns += [("user", user), ("assistant", assistant)]
    return render(turns)
