"""Loading a spec: YAML to a validated SweepSpec, with every problem reported at once.

`load_spec(path)` returns a `SweepSpec` whose paths are absolute (relative ones resolve
against the spec file's folder) or raises one `ConfigError` listing every problem as
"<path.in.file> (line N): <message>". The modules named under `plugins:` are imported
first, so the names they register are known when the sections are validated.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sweep.config.paths import raw_model_problems, resolve_demo_refs, resolve_paths
from sweep.config.plugins import import_plugins
from sweep.config.rules import cross_field_problems, suggest
from sweep.config.schema import SweepSpec
from sweep.errors import ConfigError


def _line_map(text: str) -> dict[tuple, int]:
    """Map each YAML path (tuple of keys/indices) to its 1-based line, for error messages."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def _format(loc: tuple, msg: str, lines: dict[tuple, int]) -> str:
    path = ".".join(str(p) for p in loc) or "(top level)"
    line = None
    for cut in range(len(loc), -1, -1):  # nearest enclosing node that exists in the file
        if loc[:cut] in lines:
            line = lines[loc[:cut]]
            break
    where = f"{path} (line {line})" if line else path
    return f"{where}: {msg}"


def _pydantic_messages(exc: ValidationError, data: Any) -> list[tuple[tuple, str]]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _lookup_model(loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            allowed = [a for a in allowed if a != "spec_path"]
            msg = f"unknown key{suggest(str(loc[-1]), allowed)}"
            if allowed:
                msg += f"; allowed here: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "literal_error":
            msg = f"{err['input']!r} is not one of {err['ctx']['expected']}"
        elif kind == "value_error":
            msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        else:
            msg = err["msg"]
            if "input" in err and kind.endswith("_type"):
                msg += f" (got {err['input']!r})"
        out.append((loc, msg))
    return out


def _lookup_model(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found at `loc` from the top, for listing allowed keys."""
    model: Any = SweepSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(part, str) and hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _plugin_problems(modules: Any) -> list[tuple[tuple, str]]:
    """Import each module of the spec's `plugins:` list; (location, message) per failure.
    A malformed list is left to the schema, which reports it with the other problems."""
    if not isinstance(modules, list):
        return []
    return [
        (("plugins", i), problem)
        for i, module in enumerate(modules)
        if isinstance(module, str)
        for problem in import_plugins([module])
    ]


def expand_name(name: str, today: _dt.date | None = None) -> str:
    """`{date}` in a study name becomes today's date (YYYY-MM-DD), for nightly studies."""
    today = today or _dt.date.today()
    return name.replace("{date}", today.isoformat())


def parse_spec(
    text: str, *, source: str = "spec", base_dir: Path | None = None, today: _dt.date | None = None
) -> SweepSpec:
    """Parse and validate spec text. Raises ConfigError with every problem found.

    `today` is the date `{date}` in the name becomes (default: today; `sweep nightly --date`)."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError([f"YAML syntax error at {where}: {exc.problem or exc}"], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML syntax error: {exc}"], source=source) from None
    if data is None:
        raise ConfigError(["the file is empty: a spec needs at least name, models and objectives"], source=source)
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {type(data).__name__}"], source=source)
    lines = _line_map(text)
    if isinstance(data.get("name"), str):
        data["name"] = expand_name(data["name"], today)
    # Plug-ins first: the names they register are then known to the sections' validators.
    located = _plugin_problems(data.get("plugins"))
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        located += _pydantic_messages(exc, data)
    if located:
        raise ConfigError([_format(loc, msg, lines) for loc, msg in located], source=source) from None
    problems = [_format(loc, msg, lines) for loc, msg in cross_field_problems(spec)]
    if problems:
        raise ConfigError(problems, source=source)
    if base_dir is not None:
        spec = resolve_paths(spec, base_dir)
    return spec


def load_spec(path: str | Path, *, resolve_demo: bool = True, today: _dt.date | None = None) -> SweepSpec:
    """Load a spec file. Relative paths resolve against the file's folder; `{date}` in the
    name becomes `today` (default: today's date).

    With resolve_demo, `demo:<member>` references are replaced by paths into the demo
    family (the shipped one, or $SWEEP_DEMO_DIR's; nothing is trained).
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError([f"spec file not found: {path}"], source=source)
    if path.is_dir():
        raise ConfigError([f"{path} is a folder; give the spec's YAML file"], source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the spec: {exc}"], source=source) from None
    try:
        spec = parse_spec(text, source=source, base_dir=path.resolve().parent, today=today)
    except ConfigError as exc:
        # Report missing model folders in the same round as the schema problems.
        extra = raw_model_problems(text, path.resolve().parent)
        if not extra:
            raise
        raise ConfigError(exc.problems + extra, source=source) from None
    spec = spec.model_copy(update={"spec_path": str(path.resolve())})
    if resolve_demo:
        spec = resolve_demo_refs(spec)
    return spec
