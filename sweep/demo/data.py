"""The toy world: arithmetic with worked column traces, and small format instructions.

Everything here is pure Python and seeded (`random.Random`), so a seed fixes every
document, prompt and split. Three kinds of text come out of it:

- pretraining documents (`pretrain_document`): plain facts and expressions, worked
  traces, instruction text, and chat turns in BOTH answer styles (direct and
  `<think>`), so that the fine-tunes only have to shift style, not learn skills;
- fine-tuning examples (`instruct_example`, `reasoning_example`): a chat prompt and the
  response the fine-tune is trained on (loss on the response only);
- evaluation problems (`make_splits`): disjoint seeded search / held-out / probe sets.

A response in the reasoning style is `<think>TRACE[ wait, check: TRACE]...</think> ANSWER`:
the column trace, then 0-2 re-verification passes (the same trace again), drawn per
example, so that traces vary in length as a distilled reasoner's do (one pass takes a
response past the probe's 64-token budget; `Recipe.reasoning_checks`). In the instruct
style it is just `ANSWER`. The final answer is always the text after the last
`</think>`, stripped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sweep.demo.tokenizer import THINK_END, THINK_START

EOS = "<eos>"

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class Problem:
    """One question of the toy world: `prompt` is the user message, `answer` the final answer."""

    kind: str  # "add" (reasoning task); "reverse", "upper", "words" (instruction task)
    prompt: str
    answer: str
    trace: str = ""  # worked steps, for arithmetic only

    @property
    def task(self) -> str:
        return "reasoning" if self.kind in ARITHMETIC else "instruct"

    def reasoning_response(self, checks: int = 0) -> str:
        """`<think>TRACE</think> ANSWER`, with `checks` verification passes after the trace."""
        if not self.trace:
            return self.answer
        return f"{THINK_START}{self.trace}{(CHECK + self.trace) * checks}{THINK_END} {self.answer}"

    def instruct_response(self) -> str:
        return self.answer


CHECK = " wait, check: "  # opens a verification pass: the trace worked again (14 + 26 tokens)
ARITHMETIC = ("add",)
FORMATS = ("reverse", "upper", "words")


# ---------------------------------------------------------------- arithmetic


def add_trace(a: int, b: int) -> str:
    """Column addition, right to left: `7+9+0=16,4+8+1=13,3+5+1=09` for 347+589.

    Each column is `x+y+carry=DD` (two digits: carry out, then the digit), so the answer
    is the last carry (when 1) followed by the digits read from the last column back.
    """
    da, db = str(a)[::-1], str(b)[::-1]
    carry, cols = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        cols.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return ",".join(cols)


def number_words(n: int) -> str:
    """0..999 in words: 342 -> 'three hundred forty two'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 6)))


def make_problem(rng: random.Random, kind: str) -> Problem:
    if kind == "add":
        a, b = rng.randint(100, 999), rng.randint(100, 999)  # three digits: a 3-column trace
        return Problem("add", f"{a}+{b}=?", str(a + b), add_trace(a, b))
    if kind == "reverse":
        w = _word(rng)
        return Problem("reverse", f"Reverse: {w}", w[::-1])
    if kind == "upper":
        w = _word(rng)
        return Problem("upper", f"Upper: {w}", w.upper())
    if kind == "words":
        n = rng.randint(0, 999)
        return Problem("words", f"In words: {n}", number_words(n))
    raise ValueError(f"unknown problem kind {kind!r}")


def random_problem(rng: random.Random, kinds: tuple[str, ...]) -> Problem:
    return make_problem(rng, rng.choice(kinds))


# ---------------------------------------------------------------- evaluation splits


@dataclass(frozen=True)
class Splits:
    """Disjoint problem sets, by name: `<task>_<split>` for task in reasoning/instruct,
    split in search/heldout, plus `probe`. `reserved` holds every prompt in them, which
    training data never uses."""

    sets: dict[str, list[Problem]]

    @property
    def reserved(self) -> frozenset[str]:
        return frozenset(p.prompt for problems in self.sets.values() for p in problems)


def make_splits(*, seed: int, n_eval: int = 100, n_probe: int = 64) -> Splits:
    """Seeded, disjoint evaluation sets (no prompt appears twice across all of them).

    The probe set is 2/3 addition (where reasoning length can collapse), 1/3 format.
    """
    rng = random.Random(f"demo-splits-{seed}")
    seen: set[str] = set()

    def draw(kinds: tuple[str, ...], n: int) -> list[Problem]:
        out: list[Problem] = []
        while len(out) < n:
            problem = make_problem(rng, kinds[len(out) % len(kinds)])
            if problem.prompt not in seen:
                seen.add(problem.prompt)
                out.append(problem)
        return out

    sets = {
        "reasoning_search": draw(ARITHMETIC, n_eval),
        "reasoning_heldout": draw(ARITHMETIC, n_eval),
        "instruct_search": draw(FORMATS, n_eval),
        "instruct_heldout": draw(FORMATS, n_eval),
    }
    n_arith = (2 * n_probe) // 3
    probe = draw(ARITHMETIC, n_arith) + draw(FORMATS, n_probe - n_arith)
    rng.shuffle(probe)
    sets["probe"] = probe
    return Splits(sets)


# ---------------------------------------------------------------- training text


def chat(prompt: str, response: str | None = None) -> str:
    """The chat template's rendering (see tokenizer.CHAT_TEMPLATE), kept in one place."""
    head = f"Q: {prompt}\nA: "
    return head if response is None else head + response + EOS


def _fresh(rng: random.Random, kinds: tuple[str, ...], reserved: frozenset[str]) -> Problem:
    while True:
        problem = random_problem(rng, kinds)
        if problem.prompt not in reserved:
            return problem


def world_document(
    rng: random.Random, reserved: frozenset[str], *, trace_share: float = 0.35, expression_share: float = 0.15
) -> str:
    """Generic toy-world text (no chat turns): facts, expressions, traces, instructions.
    `trace_share` of them are worked traces, `expression_share` plain sums (`347+589=936`:
    the answer with no working), 0.10 digit facts, instruction text the rest."""
    r = rng.random()
    if r < trace_share:  # worked arithmetic, the skill the reasoning style relies on
        p = _fresh(rng, ARITHMETIC, reserved)
        return f"{p.prompt[:-2]}: {p.trace} so {p.answer}"
    if r < trace_share + expression_share:  # plain expressions
        p = _fresh(rng, ARITHMETIC, reserved)
        return f"{p.prompt[:-2]}={p.answer}"
    if r < trace_share + expression_share + 0.10:  # digit facts
        facts = []
        for _ in range(4):
            x, y = rng.randint(0, 9), rng.randint(0, 9)
            facts.append(f"{x}+{y}={x + y}")
        return " ".join(facts)
    # instruction text: the format skills, stated as facts
    return format_fact(_fresh(rng, FORMATS, reserved))


def format_fact(p: Problem) -> str:
    """A format task stated as a fact: `reverse abcd = dcba`, `upper abcd = ABCD`,
    `128 in words is one hundred twenty eight`."""
    subject = p.prompt.split(": ", 1)[1]
    if p.kind == "reverse":
        return f"reverse {subject} = {p.answer}"
    if p.kind == "upper":
        return f"upper {subject} = {p.answer}"
    return f"{subject} in words is {p.answer}"


def draw_checks(rng: random.Random, weights: tuple[float, ...]) -> int:
    """A number of verification passes: k with probability weights[k] (normalized)."""
    return rng.choices(range(len(weights)), weights=weights)[0] if len(weights) > 1 else 0


def pretrain_document(
    rng: random.Random,
    reserved: frozenset[str],
    *,
    chat_share: float,
    checks: tuple[float, ...] = (1.0,),
    chat_arithmetic_share: float | None = None,
    trace_share: float = 0.35,
    expression_share: float = 0.15,
    direct_arithmetic: bool = True,
) -> str:
    """A pretraining row: world text, or (with probability chat_share) a chat turn.

    Chat turns about arithmetic come in both styles with equal odds (`direct_arithmetic`;
    else always thinking), their traces with `checks`-weighted verification passes;
    format chats are direct (nobody thinks about upper-casing). `chat_arithmetic_share`
    of chat turns are additions (None: one kind in four, as every kind).
    """
    if rng.random() >= chat_share:
        return world_document(rng, reserved, trace_share=trace_share, expression_share=expression_share)
    if chat_arithmetic_share is None:
        p = _fresh(rng, ARITHMETIC + FORMATS, reserved)
    else:
        p = _fresh(rng, ARITHMETIC if rng.random() < chat_arithmetic_share else FORMATS, reserved)
    if p.kind in ARITHMETIC and (not direct_arithmetic or rng.random() < 0.5):
        return chat(p.prompt, p.reasoning_response(draw_checks(rng, checks)))
    return chat(p.prompt, p.instruct_response())


def instruct_example(rng: random.Random, reserved: frozenset[str], *, arithmetic_share: float) -> tuple[str, str]:
    """(chat prompt, response): short direct answers, for arithmetic and format tasks."""
    kinds = ARITHMETIC if rng.random() < arithmetic_share else FORMATS
    p = _fresh(rng, kinds, reserved)
    return chat(p.prompt), p.instruct_response() + EOS


def reasoning_example(
    rng: random.Random, reserved: frozenset[str], *, checks: tuple[float, ...] = (1.0,)
) -> tuple[str, str]:
    """(chat prompt, response): distillation-style `<think>` traces, arithmetic only, with
    k verification passes, k drawn with `checks` weights."""
    p = _fresh(rng, ARITHMETIC, reserved)
    return chat(p.prompt), p.reasoning_response(draw_checks(rng, checks)) + EOS


def final_answer(response: str) -> str:
    """What the tasks score: the text after the last `</think>`, stripped (all of it if none)."""
    return response.rsplit(THINK_END, 1)[-1].strip()
