"""Every command the docs and our messages tell a user to type names a command and options
that exist.

A renamed option breaks each place that quotes it, and only a reader who types it finds
out. Read off the README, docs/*.md and every string in our source (error messages,
docstrings): each `sweep ...` / `python -m sweep ...` and `[python] [bench/]NAME.py ...`
in a code span or code block, walked down its subcommands with the real argparse parsers
(sweep.cli's, and each bench script's as its main() builds it), and each `--option` in it
looked up there. Values and positionals are not checked: docs shorten them (DIR, FILE)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {p.stem: p for p in sorted((ROOT / "bench").glob("*.py")) if not p.stem.startswith("_")}
COMMAND = re.compile(
    r"(?:python\s+-m\s+)?(?<![\w./-])sweep\s+(?=[a-z])|(?:python\s+)?(?:bench/)?(?<![\w.-])("
    + "|".join(SCRIPTS)
    + r")\.py\b"
)
END = re.compile(r"\s(?:#|\||;|&&|>|2>)")  # a comment, a pipe or a redirection ends a command


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _bench_parser(path: Path, monkeypatch: pytest.MonkeyPatch) -> argparse.ArgumentParser:
    """The parser `path`'s main() builds: stopped at its parse_args, before any work."""
    spec = importlib.util.spec_from_file_location(f"_docs_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def parsed(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise _Parsed(self)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parsed)
        try:
            module.main()
        except _Parsed as done:
            return done.parser
    raise AssertionError(f"bench/{path.name}: main() returned without parsing its arguments")


def _code(text: str) -> list[str]:
    """Markdown's code: each line of a fenced block (a trailing backslash joins the next)
    and each inline span."""
    out = []
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S):
        out += re.sub(r"\\\n\s*", " ", block).splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    out += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return out


def _strings(path: Path) -> list[str]:
    """The commands a module's strings may hold: each line, or the code spans in it."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            for line in re.sub(r"\\\n\s*", " ", node.value).splitlines():
                out += re.findall(r"`([^`]+)`", line) or [line]
    return out


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def _check(
    text: str, parsers: dict[str, argparse.ArgumentParser], get: Callable[[Path], argparse.ArgumentParser]
) -> tuple[int, list[str]]:
    """How many options `text`'s commands name, and what is wrong with them."""
    checked, wrong = 0, []
    for match in COMMAND.finditer(text):
        name = match.group(1) or "sweep"
        if name not in parsers:
            parsers[name] = get(SCRIPTS[name])
        words = END.split(" " + text[match.end() :])[0].split()
        parser, said = parsers[name], name if name == "sweep" else f"bench/{name}.py"
        while (choices := _subcommands(parser)) is not None and words and not words[0].startswith("-"):
            named = words[0].split("|")  # a usage line: `demo build|check|table`
            if not all(n in choices for n in named):
                # prose may follow a name; a plain word followed by an option is a command
                if re.fullmatch(r"[a-z][\w|-]*", words[0]) and any(w.startswith("--") for w in words):
                    wrong.append(f"{said} has no command {words[0]!r} (in {text.strip()[:90]!r})")
                parser = None
                break
            said, parser, words = f"{said} {named[0]}", choices[named[0]], words[1:]
        if parser is None:
            continue
        options = [o for action in parser._actions for o in action.option_strings]
        for word in words:
            if not word.startswith("--") or word == "--":
                continue
            option = re.split(r"[=,.;:)'\"`]", word)[0]
            checked += 1
            # argparse takes a unique prefix of an option as the option
            if option not in options and len([o for o in options if o.startswith(option)]) != 1:
                wrong.append(f"{said} has no option {option} (in {text.strip()[:90]!r})")
    return checked, wrong


def test_every_documented_command_names_options_that_exist(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # bench scripts import each other
    from sweep.cli import build_parser

    parsers = {"sweep": build_parser()}

    def get(path: Path) -> argparse.ArgumentParser:
        return _bench_parser(path, monkeypatch)

    checked, wrong = 0, []
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| command |", readme.index("## CLI reference"))
    for row in readme[start : readme.index("\n\n", start)].splitlines()[2:]:  # `run SPEC [--address A]`
        usage = re.sub(r"\\\||[][()]", " ", re.findall(r"`([^`]+)`", row)[0])
        n, bad = _check(f"sweep {usage}", parsers, get)
        checked += n
        wrong += [f"README.md, CLI reference: {b}" for b in bad]
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for text in _code(doc.read_text()):
            n, bad = _check(text, parsers, get)
            checked += n
            wrong += [f"{doc.relative_to(ROOT)}: {b}" for b in bad]
    for package in ("core", "merge", "evals", "sweep", "bench"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "family" in path.parts:  # the shipped demo family is data
                continue
            for text in _strings(path):
                n, bad = _check(text, parsers, get)
                checked += n
                wrong += [f"{path.relative_to(ROOT)}: {b}" for b in bad]
    assert wrong == [], "documented commands that do not parse:\n" + "\n".join(wrong)
    assert checked > 200, f"only {checked} options found in the docs: is the command pattern still right?"


def _spec_keys(model: type, prefix: str = "") -> list[str]:
    """The spec's keys, dotted: each section's fields, down to the fields that hold a value
    (a range, a list of objectives, a dict of weights is one key, described in its row)."""
    from pydantic import BaseModel

    from sweep.config.schema import RangeSpec

    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:  # filled in by the loader, not written by a user
            continue
        kinds = [field.annotation]
        if isinstance(field.annotation, types.UnionType) or typing.get_origin(field.annotation) is typing.Union:
            kinds += typing.get_args(field.annotation)  # `LmEvalConfig | None` is a section; a list of them is not
        section = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
        if section is None or issubclass(section, RangeSpec) or name == "reward":
            keys.append(f"{prefix}{name}")
        else:
            keys += _spec_keys(section, f"{prefix}{name}.")
    return keys


def test_the_readme_spec_reference_has_a_row_for_every_key():
    """The README's spec reference is where users look a key up: every key the schema
    accepts has a row (`evals.probe.steps`, or `steps` after `evals.probe.kl_coef` in one
    row, or `.instruct` after `models.pretrained`), and every row names a key that exists."""
    from sweep.config.schema import SweepSpec

    text = (ROOT / "README.md").read_text()
    start = text.index("| key |", text.index("## Spec reference"))
    documented = set()
    for row in text[start : text.index("\n\n", start)].splitlines()[2:]:
        first = None
        for key in re.findall(r"`([^`]+)`", row.split("|")[1]):
            if first is None or "." in key.lstrip("."):
                first = key
                documented.add(key)
            else:  # `steps` or `.instruct`: a sibling of the row's first key
                documented.add(first.rsplit(".", 1)[0] + "." + key.lstrip("."))
    keys = set(_spec_keys(SweepSpec))
    missing, unknown = sorted(keys - documented), sorted(documented - keys)
    assert not missing, f"spec keys without a row in the README's spec reference: {missing}"
    assert not unknown, f"rows of the README's spec reference that name no spec key: {unknown}"
