"""A small world of multi-step arithmetic word problems, so the pipeline means something offline.

Every problem is a start amount followed by add/subtract events and one question. The splits
differ along the axes that make distillation interesting: the in-distribution split (``id``: 2-3
events, the training templates) is what the student is distilled on; ``ood_steps`` has 4 events,
``ood_templates`` uses only event sentences the student never saw, and ``ood_mixed`` is an ``id``
problem with exactly one of its events told in an unseen sentence (a partial shift, as SVAMP is to
GSM8K). The teacher is trained on the first three, so the teacher-student gap out of distribution
is measurable. ``id`` problems also tell 0-2 asides, sentences that change nothing ("It is a sunny
day."), which the detailed plain rationales walk ("It is a sunny day: still 58."): a student
distilled on them sees walks of 2 to 5 sentences in which the k-th sentence is not the k-th event,
and that is what lets it walk four events (README: the demo world).

Rationales come in the CoT formats of arXiv 2502.18001 (plain, sub-question chain,
rephrase-and-respond, symbolic) at three granularity levels (1 terse .. 3 detailed), with phrase
variation inside each, and always end in the canonical answer sentence ``The answer is N.``
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from data_schemas import QUESTIONS, write_table

NAMES = ["Tom", "Ana", "Ben", "Mia", "Sam", "Lea", "Max", "Zoe", "Leo", "Ivy", "Raj", "Eva"]
ITEMS = ["apples", "marbles", "stamps", "cards", "coins", "shells", "books", "pens", "stickers"]

# Event sentences: (kind, template) and the short verb phrase the detailed rationales use. "id"
# templates are seen in distillation, "ood" ones are not. Twelve of each kind, in varied sentence
# shapes, so that a student distilled on "id" has to read what a sentence means rather than
# memorise a handful of verbs (with three of each kind it did, README: the demo world).
_ID_EVENTS = [
    ("add", "{name} buys {n} more {item}.", "buying {n} more"),
    ("add", "{name} finds {n} {item}.", "finding {n}"),
    ("add", "A friend gives {name} {n} {item}.", "getting {n} from a friend"),
    ("add", "{name} gets {n} {item} as a gift.", "getting {n} as a gift"),
    ("add", "{name} picks up {n} {item} in the park.", "picking up {n}"),
    ("add", "{name} receives {n} {item} in the mail.", "receiving {n}"),
    ("add", "Then {name} collects {n} more {item}.", "collecting {n} more"),
    ("add", "A neighbor brings {name} {n} {item}.", "getting {n} from a neighbor"),
    ("add", "{name} earns {n} {item} at the fair.", "earning {n}"),
    ("add", "Grandma sends {n} {item} to {name}.", "getting {n} from grandma"),
    ("add", "{name} makes {n} new {item}.", "making {n}"),
    ("add", "Next, {n} {item} arrive for {name}.", "getting {n} that arrive"),
    ("sub", "{name} gives away {n} {item}.", "giving away {n}"),
    ("sub", "{name} loses {n} {item}.", "losing {n}"),
    ("sub", "{name} sells {n} {item}.", "selling {n}"),
    ("sub", "{name} uses {n} {item} for a project.", "using {n}"),
    ("sub", "{name} throws away {n} {item}.", "throwing away {n}"),
    ("sub", "{name} leaves {n} {item} on the bus.", "leaving {n} on the bus"),
    ("sub", "Then {name} trades away {n} {item}.", "trading away {n}"),
    ("sub", "A dog chews up {n} of the {item} of {name}.", "losing {n} to a dog"),
    ("sub", "{name} spends {n} {item}.", "spending {n}"),
    ("sub", "{name} hands {n} {item} to a classmate.", "handing over {n}"),
    ("sub", "A thief takes {n} {item} from {name}.", "losing {n} to a thief"),
    ("sub", "Next, {n} {item} of {name} break.", "losing {n} that break"),
]
_OOD_EVENTS = [
    ("add", "{name} wins {n} {item} in a contest.", "winning {n}"),
    ("add", "Later, {n} {item} are added to the pile of {name}.", "adding {n}"),
    ("sub", "{name} donates {n} {item} to a school.", "donating {n}"),
    ("sub", "A storm ruins {n} of the {item} of {name}.", "losing {n} in a storm"),
]
EVENTS = {
    "id": [(kind, template) for kind, template, _ in _ID_EVENTS],
    "ood": [(kind, template) for kind, template, _ in _OOD_EVENTS],
}
# Short verb phrases for the detailed rationales, keyed by the event template.
EVENT_PHRASES = {template: phrase for _, template, phrase in _ID_EVENTS + _OOD_EVENTS}
# Sentences that change nothing, told among an ``id`` problem's events.
ASIDES = [
    "{name} likes the {item} a lot.",
    "The {item} are in a box.",
    "{name} counts the {item}.",
    "{name} keeps the {item} on a shelf.",
    "It is a sunny day.",
    "{name} smiles at a friend.",
]


@dataclass(frozen=True)
class SplitSpec:
    """How one split's problems are drawn."""

    steps: tuple[int, ...]
    templates: str  # key of EVENTS
    one_unseen: bool = False  # one event, at a random place, draws from EVENTS["ood"] instead
    asides: int = 0  # at most this many ASIDES, each anywhere among the events


SPLITS: dict[str, SplitSpec] = {
    "id": SplitSpec(steps=(2, 3), templates="id", asides=2),
    "ood_steps": SplitSpec(steps=(4,), templates="id"),
    "ood_templates": SplitSpec(steps=(2, 3), templates="ood"),
    "ood_mixed": SplitSpec(steps=(2, 3), templates="id", one_unseen=True),
}

# Events change the amount by 1..MAX_AMOUNT: the demo measures the transfer of multi-step
# reasoning (which events add, which subtract, carrying the running amount), and a 0.7 M-parameter
# student adds a one-digit amount reliably where two-digit sums were arithmetic luck.
MAX_AMOUNT = 9

FORMATS = ("plain", "subq", "rar", "symbolic")
GRANULARITIES = (1, 2, 3)


@dataclass(frozen=True)
class Event:
    kind: str  # "add" or "sub"
    amount: int
    template: str


@dataclass(frozen=True)
class Problem:
    """One word problem with its gold answer and the structure needed to write rationales."""

    name: str
    item: str
    start: int
    events: tuple[Event, ...]
    asides: tuple[tuple[int, str], ...] = ()  # (index of the event it comes before, ASIDES template)

    @property
    def told(self) -> list[tuple[int | None, str]]:
        """The sentences between the start and the question, in order: (event index, or None for an
        aside, sentence)."""
        out: list[tuple[int | None, str]] = []
        for i in range(len(self.events) + 1):
            out += [(None, self._say(t)) for place, t in self.asides if place == i]
            if i < len(self.events):
                out.append((i, self._say(self.events[i].template, self.events[i].amount)))
        return out

    def _say(self, template: str, n: int = 0) -> str:
        return template.format(name=self.name, n=n, item=self.item)

    @property
    def sentences(self) -> list[str]:
        """The start, the told sentences, and the question asked."""
        parts = [f"{self.name} has {self.start} {self.item}."]
        parts += [sentence for _, sentence in self.told]
        parts.append(f"How many {self.item} does {self.name} have now?")
        return parts

    @property
    def question(self) -> str:
        return " ".join(self.sentences)

    @property
    def steps(self) -> list[tuple[int, str, int, int]]:
        """(before, op, amount, after) for each event."""
        out, value = [], self.start
        for e in self.events:
            after = value + e.amount if e.kind == "add" else value - e.amount
            out.append((value, "+" if e.kind == "add" else "-", e.amount, after))
            value = after
        return out

    @property
    def answer(self) -> int:
        return self.steps[-1][3]


def draw_problem(rng: random.Random, spec: SplitSpec) -> Problem:
    """Draw one problem; every intermediate value stays between 0 and 99."""
    n_steps = rng.choice(spec.steps)
    unseen_at = rng.randrange(n_steps) if spec.one_unseen else -1
    value = rng.randint(5, 60)
    start, events = value, []
    for i in range(n_steps):
        pool = EVENTS["ood" if i == unseen_at else spec.templates]
        kind, template = rng.choice(pool)
        if kind == "sub" and value < 2:
            kind, template = rng.choice([t for t in pool if t[0] == "add"])
        if kind == "add" and value > 90:
            kind, template = rng.choice([t for t in pool if t[0] == "sub"])
        amount = rng.randint(1, min(MAX_AMOUNT, 99 - value if kind == "add" else value - 1))
        value = value + amount if kind == "add" else value - amount
        events.append(Event(kind, amount, template))
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    asides: list[tuple[int, str]] = []
    if spec.asides:  # drawn only here, so the problems of the other splits stay as they were
        asides = sorted((rng.randint(0, n_steps), rng.choice(ASIDES)) for _ in range(rng.randint(0, spec.asides)))
    return Problem(name, item, start, tuple(events), tuple(asides))


def generate_split(split: str, n: int, seed: int, spec: SplitSpec | None = None) -> list[Problem]:
    """``n`` distinct problems of ``split`` (drawn as ``spec``, by default the split's own),
    reproducible from ``seed``."""
    rng = random.Random(f"{split}:{seed}")
    seen: set[str] = set()
    problems: list[Problem] = []
    while len(problems) < n:
        p = draw_problem(rng, spec or SPLITS[split])
        if p.question not in seen:
            seen.add(p.question)
            problems.append(p)
    return problems


def answer_sentence(answer: int) -> str:
    """The canonical final sentence every rationale ends with (the common answer span)."""
    return f"The answer is {answer}."


def equation(rng: random.Random, before: int, op: str, amount: int, after: int) -> str:
    # Addition commutes, which gives the teacher a cheap source of surface diversity.
    if op == "+" and rng.random() < 0.3:
        return f"{amount} + {before} = {after}"
    return f"{before} {op} {amount} = {after}"


def write_rationale(p: Problem, fmt: str, level: int, rng: random.Random) -> str:
    """A correct rationale for ``p`` in CoT format ``fmt`` at granularity ``level`` (1..3).

    Only the detailed plain rationales (levels 2 and 3) walk the asides; the others skip them."""
    steps = p.steps
    phrases = [EVENT_PHRASES[e.template].format(n=e.amount) for e in p.events]
    eqs = [equation(rng, *s) for s in steps]
    lines: list[str] = []
    if fmt == "plain":
        if level == 1:
            lines = [f"{eq}." for eq in eqs]
        elif level == 2:  # walks every told sentence, asides included
            join, value = rng.choice([": ", ", so "]), p.start
            lines = [p.sentences[0]]
            for i, sentence in p.told:
                value = value if i is None else steps[i][3]
                lines.append(f"{sentence[:-1]}{join}{f'still {value}' if i is None else eqs[i]}.")
        else:
            lines, value = [f"{p.name} starts with {p.start} {p.item}."], p.start
            for i, sentence in p.told:
                if i is None:
                    lines.append(f"{sentence[:-1]}, so {p.name} still has {value} {p.item}.")
                else:
                    value = steps[i][3]
                    lead = rng.choice(["After", "Then, after"])
                    lines.append(f"{lead} {phrases[i]}, {p.name} has {eqs[i]} {p.item}.")
    elif fmt == "subq":
        for i, (eq, ph) in enumerate(zip(eqs, phrases, strict=True)):
            if level == 1:
                lines.append(f"Step {i + 1}? {eq}.")
            elif level == 2:
                lines.append(f"How many after {ph}? {eq}.")
            else:
                q = rng.choice(["How many", "What is the number of"])
                lines.append(f"{q} {p.item} after {ph}? {p.name} has {eq}.")
    elif fmt == "rar":
        restated = ", ".join(phrases)
        if level == 1:
            lines = [f"Restated: {p.start}, then {restated}."]
        else:
            lines = [f"Restated: {p.name} starts with {p.start} {p.item}, then {restated}."]
            if level == 3:
                lines.append(f"We need the {p.item} left at the end.")
        lines += [f"{eq}." for eq in eqs]
    elif fmt == "symbolic":
        var = rng.choice(["x", "n", "t"])
        lines = [f"Let {var} = {p.start}."]
        for before, op, amount, after in steps:
            if level == 1:
                lines.append(f"{var} {op} {amount} = {after}.")
            else:
                lines.append(f"{var} = {var} {op} {amount} = {before} {op} {amount} = {after}.")
        if level == 3:
            lines.insert(1, f"{var} counts the {p.item} of {p.name}.")
    else:
        raise ValueError(f"unknown CoT format {fmt!r}; expected one of {FORMATS}")
    lines.append(answer_sentence(p.answer))
    return " ".join(lines)


TRAIN_FILE = "train.parquet"  # the generator's questions (a stage input, not a stage output)


def write_question_sets(out_dir: Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    """``TRAIN_FILE`` (in-distribution questions to distil on) and ``test_<split>.parquet`` for
    every split. Train and in-distribution test questions are disjoint (drawn as one set, then cut).
    """
    paths = {}
    for split in SPLITS:
        n = n_test + (n_train if split == "id" else 0)
        problems = generate_split(split, n, seed)
        rows = [
            {"question_id": f"{split}-{seed}-{i}", "question": p.question, "answer": str(p.answer)}
            for i, p in enumerate(problems)
        ]
        if split == "id":
            paths["train"] = write_table(rows[n_test:], out_dir / TRAIN_FILE, QUESTIONS)
        paths[split] = write_table(rows[:n_test], out_dir / f"test_{split}.parquet", QUESTIONS)
    return paths
