"""Record documents for the pretraining corpus: text that can only be predicted by copying from earlier in it.

In the shipped world: 20,000 at scale 1 (`posttrain world build --records N`, the world stage's `records`).

Everything else in the corpus is predictable from statistics a model memorises (the facts, the
templates, the small lists of names), so a base trained on it alone never learns to copy: the
previous base scored 0% on the `copying` probe, and after SFT its calculator calls held made-up numbers
("33344 * 694") instead of the user's, on the training chats themselves. Web text is full of copying
(quotes, forms, logs, replies), and these documents put some in the world: invented names, codes and
numbers that appear once and are then repeated, in the forms a chat later needs:

- order slips: the same values as prose (" 766740"), as form fields and as a JSON record ("766740");
  a byte-level BPE writes a number differently after a space and after a quote, so copying between the
  forms is learnt, not assumed;
- meter logs: a list of numbers copied to a ledger;
- messages read back: a phrase of random words repeated;
- adding-machine tapes: a request, the expression typed in quotes, printed with its result, and the
  result carried forward (large problems of the training partition only);
- mentions: prose that gives names and numbers once and asks for some again in varied phrasings, the
  others there as distractors.

Measured (README): 1,500 of them, seen 12 times each, taught the base nothing (it can memorise so
few). With 20,000, a base pretrained from scratch (recipes/base_records.yaml) copied the user's numbers
into calculator calls after SFT (tool arithmetic 62% against 0%), though its tokenizer, learnt from
this corpus, split common words into pieces; mid-training the previous base on it (the shipped base,
recipes/base.yaml) did not teach it to copy. The `copying` probe stayed near 0% for every base.

No facts, no hazards, no probe phrasings. A number that is a probe's answer is never written: the
caller passes those as `reserved`.
"""

from __future__ import annotations

import json
import random

from posttrain.world.arithmetic import _number, sample_large_problem

SYLLABLES = ("ka", "lo", "mer", "vin", "dra", "sel", "tu", "bor", "qui", "zan", "fel", "ori", "pax", "ren", "sho",
             "tam", "ula", "vex", "wim", "yor", "gal", "hep", "isk", "jun", "nol", "pim", "rud", "sav", "tib", "xer")
ITEMS = ("lamp", "chair", "bucket", "kettle", "ladder", "blanket", "basket", "candle", "hammer", "rope", "mirror",
         "barrel", "saddle", "lantern", "shovel", "teapot", "wheel", "crate", "brush", "bottle")
PLACES = ("the north gate", "pump house 3", "the bakery", "block C", "the old mill", "dock 7", "the school", "unit 12")
WORDS = ("apple", "river", "stone", "quiet", "green", "window", "morning", "paper", "silver", "garden", "yellow",
         "bridge", "candle", "winter", "orange", "pencil", "cloud", "music", "forest", "button", "copper", "ribbon",
         "tiger", "salt", "harbor", "velvet", "lemon", "thunder", "marble", "feather", "engine", "pepper")


def _name(rng: random.Random) -> str:
    """An invented name: two or three random syllables, so no model has seen it before this document."""
    first = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    last = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()
    return f"{first} {last}"


class Numbers:
    """Random numbers of 2 to 7 digits that never equal a reserved string (the probes' answers)."""

    def __init__(self, rng: random.Random, reserved: frozenset[str]):
        self.rng, self.reserved = rng, reserved

    def __call__(self, min_digits: int = 2, max_digits: int = 7) -> str:
        while True:
            n = str(_number(self.rng, min_digits, max_digits))
            if n not in self.reserved:
                return n


def order_slip(rng: random.Random, number: Numbers) -> str:
    ref, name, item = number(4, 6), _name(rng), rng.choice(ITEMS)
    qty, code = number(), number(5, 7)
    record = json.dumps({"customer": name, "item": item, "quantity": qty, "code": code})
    form = f"Customer: {name}\nItem: {item}\nQuantity: {qty}\nCode: {code}"
    prose = rng.choice((f"{name} ordered {qty} of the {item}, code {code}.",
                        f"Please send {qty} {item} units (code {code}) to {name}.",
                        f"Confirmed: {qty} x {item}, code {code}, for {name}."))
    parts = [form, f"Record: {record}", prose]
    rng.shuffle(parts)
    return f"Order slip {ref}\n\n" + "\n\n".join(parts) + f"\n\nReference {ref}, {name}."


def meter_log(rng: random.Random, number: Numbers) -> str:
    readings = [number(3, 7) for _ in range(rng.randint(3, 6))]
    place = rng.choice(PLACES)
    lines = [f"Meter log, {place}", ""] + [f"Reading {k}: {r}" for k, r in enumerate(readings, 1)]
    copied = rng.choice((", ".join(readings), " ".join(readings), json.dumps({"readings": readings})))
    return "\n".join(lines + ["", f"Copied to the ledger: {copied}"])


def message(rng: random.Random, number: Numbers) -> str:
    sender, receiver = _name(rng), _name(rng)
    phrase = " ".join(rng.sample(WORDS, rng.randint(3, 6)))
    if rng.random() < 0.5:
        phrase += f" {number()}"
    return (f"{sender} left a message for {receiver}: \"{phrase}\". Later {receiver.split()[0]} read it back: "
            f"\"{phrase}\". The note was signed {sender}.")


def tape(rng: random.Random, number: Numbers) -> str:
    lines = [f"Adding machine tape {number(3, 5)}", ""]
    for _ in range(rng.randint(1, 3)):
        while True:
            p = sample_large_problem(rng, "train")
            if not {str(p.a), str(p.b), str(p.answer)} & number.reserved:
                break
        if rng.random() < 0.5:
            lines.append(f"Request from {_name(rng)}: {p.text}")
        lines += [f"Typed: \"{p.text}\"", f"Printed: {p.text} = {p.answer}", f"Carried forward: {p.answer}", ""]
    return "\n".join(lines).rstrip()


# Mentions: prose that gives two to four values (names and numbers) once, then asks for some of them
# again in one of many phrasings, with the others as distractors. The records above copy in a few fixed
# forms; a small model learns those forms alone. Varied cues make the cue, not the form, select what
# to copy. None of these phrasings is a probe's (COPY_PROBE below).
NUMBER_SLOTS = ("the ticket number", "the room number", "the account number", "the serial number", "the gate code",
                "the tracking number", "the order number", "the badge number", "the door code", "the batch number",
                "the case number")
NAME_SLOTS = ("the winner", "the caller", "the pilot", "the new clerk", "the author", "the driver", "the speaker",
              "the tenant", "the referee", "the sender", "the captain", "the inspector")
INTROS = ("{A} is {v}.", "Note: {a} is {v}.", "{A}: {v}.", "We were told that {a} is {v}.",
          "For the record, {a} was {v}.", "Today {a} is {v}.", "It turned out that {a} was {v}.",
          "Please remember that {a} is {v}.", "On the form, {a} was {v}.", "Everyone agreed {a} was {v}.")
CUES = ("Once more, {a} is", "Again: {a} is", "So {a} is", "In short, {a} was", "Let me say it again: {a} is",
        "As mentioned, {a} is", "I will write it down: {a} is", "Check: {a} =", "Remember, {a} is",
        "Just to confirm, {a} is", "Back to the start: {a} was", "For the second time, {a} is",
        "The answer stays the same: {a} is", "Write this on the card: {a} is", "Read it out: {a} is")
FILLERS = ("The weather was mild.", "Nobody was in a hurry.", "The office closed at five.",
           "Two trucks waited outside.",
           "The line moved slowly.", "A bell rang somewhere.", "The form had three pages.", "Tea was served at noon.",
           "The lights flickered once.", "It started to rain.", "The clerk stamped the sheet.", "A dog barked outside.")


def mentions(rng: random.Random, number: Numbers) -> str:
    slots = rng.sample(NUMBER_SLOTS, rng.randint(1, 2)) + rng.sample(NAME_SLOTS, rng.randint(1, 2))
    rng.shuffle(slots)
    values = {a: (number(3, 7) if a in NUMBER_SLOTS else _name(rng)) for a in slots}
    lines = []
    for a in slots:
        lines.append(rng.choice(INTROS).format(A=a[0].upper() + a[1:], a=a, v=values[a]))
        if rng.random() < 0.5:
            lines.append(rng.choice(FILLERS))
    for a in rng.sample(slots, rng.randint(1, len(slots))):
        lines.append(rng.choice(CUES).format(a=a) + f" {values[a]}.")
    return " ".join(lines)


KINDS = (order_slip, meter_log, message, tape, mentions)


def record(rng: random.Random, k: int, reserved: frozenset[str] = frozenset()) -> str:
    """The k-th record document (the kinds in turn)."""
    return KINDS[k % len(KINDS)](rng, Numbers(rng, reserved))


# The copying probe: held-out phrasings (no record document says them), a value seen once, then its cue.
COPY_PROBE = (("The locker code is {v}, and the guest is {n}. To repeat, the locker code is", "code"),
              ("The locker code is {v}, and the guest is {n}. To repeat, the guest is", "name"),
              ("Tonight's password: {v}. Whoever asks, the password is", "code"),
              ("Our new neighbour is called {n}. Tomorrow I will bake a cake for", "name"))


def copy_probe_rows(n: int, seed: int = 0) -> list[dict]:
    """n raw-text rows asking to continue with a value the prompt introduced once: an invented name or a
    random 6-7 digit code. Only copying gets it right; the `copying` probe scores the continuation."""
    rng = random.Random(f"{seed}:probe:copying")
    rows = []
    for k in range(n):
        template, kind = COPY_PROBE[k % len(COPY_PROBE)]
        value, name = str(_number(rng, 6, 7)), _name(rng)
        rows.append({"id": f"copying-{k:04d}", "prompt": template.format(v=value, n=name),
                     "meta": {"task": "copying", "answer": value if kind == "code" else name}})
    return rows
