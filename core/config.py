"""The base of every config section: a pydantic model that refuses unknown keys.

Each library defines the sections it consumes (merge.config, evals.probe.config,
evals.lmeval_config) on this base, and sweep.config's SweepSpec embeds them: one
definition per section, so a typo fails at load with the field's path.

`registered(registry, name)` checks a plug-in name against its registry inside a field
validator; `problems_of(exc, model)` turns a ValidationError into plain lines, which
`RaisesUserError` raises as a library's own error when a section is built outside a spec.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from core.errors import UserError
from core.registry import Registry

UNKNOWN_NAME = "unknown_name"  # the pydantic error type of `registered`

# BaseModel's metaclass. pydantic gives it no public name (it lives in
# pydantic._internal, which may move between releases): at run time type() reaches it,
# and only the type checker reads the private path.
if typing.TYPE_CHECKING:
    from pydantic._internal._model_construction import ModelMetaclass
else:
    ModelMetaclass = type(BaseModel)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


@typing.dataclass_transform(kw_only_default=True, field_specifiers=(Field,))
class RaisesUserError(ModelMetaclass):
    """Metaclass of a section that a library also builds on its own (`ProbeConfig(...)`):
    calling the class turns pydantic's ValidationError into the class's `user_error`
    (e.g. EvalError) headed `what` and listing `problems_of`. A spec embedding the section
    validates it without this call, so the spec still reports each problem with its path
    and line."""

    def __call__(cls, *args: Any, **data: Any) -> Any:
        try:
            return super().__call__(*args, **data)
        except ValidationError as exc:
            error: type[UserError] = getattr(cls, "user_error", UserError)
            raise error.collected(
                getattr(cls, "what", cls.__name__), problems_of(exc, typing.cast(type[BaseModel], cls))
            ) from None


def registered(registry: Registry[Any], name: Any) -> Any:
    """`name` if `registry` has it; else an error whose message lists the registered names."""
    if (problem := registry.problem(name)) is not None:
        raise PydanticCustomError(UNKNOWN_NAME, "{message}", {"message": problem})
    return name


def problems_of(exc: ValidationError, model: type[BaseModel]) -> list[str]:
    """One plain line per problem in `exc` (raised validating `model`), field path first:
    "steps must be a whole number >= 2, got 1", "update must be full or lora, got 'qlora'",
    "unknown keys stepz; known: prompts, backend, ...". Unknown keys of one mapping share a line."""
    problems: list[str] = []
    unknown: dict[tuple, list[str]] = {}
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        kind, value = err["type"], err.get("input")
        path = ".".join(str(p) for p in loc)
        if kind == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
            continue
        annotation = _annotation_at(model, loc)
        whole = "a whole number " if int in _types_in(annotation) else ""
        or_null = " or null" if type(None) in _types_in(annotation) else ""
        ctx = err.get("ctx", {})
        if kind == "missing":
            problems.append(f"'{path}' is required")
        elif kind in _BOUNDS:
            problems.append(f"{path} must be {whole}{_BOUNDS[kind]} {ctx[_bound_key(kind)]}{or_null}, got {value!r}")
        elif kind == "literal_error":
            problems.append(f"{path} must be {str(ctx['expected']).replace(chr(39), '')}, got {value!r}")
        elif kind == UNKNOWN_NAME:
            problems.append(f"{path} {value!r}: {err['msg']}")
        elif kind == "value_error":
            message = str(ctx["error"]) if "error" in ctx else err["msg"]
            # a message that opens with the value reads on from the field: "answer_regex '(' is not ..."
            joint = " " if message.startswith(repr(value)) else ": "
            problems.append(f"{path}{joint}{message}" if path else message)
        else:
            problems.append(f"{path}: {err['msg']}, got {value!r}" if path else err["msg"])
    for parent, keys in unknown.items():
        known = _model_at(model, parent)
        head = ".".join(str(p) for p in parent)
        line = f"unknown keys {', '.join(sorted(keys))}"
        if known is not None:
            line += f"; known: {', '.join(known.model_fields)}"
        problems.insert(0, f"{head}: {line}" if head else line)
    return problems


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def _bound_key(kind: str) -> str:
    return {"greater_than_equal": "ge", "greater_than": "gt", "less_than_equal": "le", "less_than": "lt"}[kind]


def _annotation_at(model: type[BaseModel], loc: tuple) -> Any:
    parent = _model_at(model, loc[:-1]) if loc else None
    field = parent.model_fields.get(str(loc[-1])) if parent is not None and loc else None
    return field.annotation if field is not None else None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class at `loc` (a path of field names) from `model`, or None."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(str(part))
        current = next(
            (t for t in _types_in(field.annotation if field else None) if issubclass(t, BaseModel)),
            None,
        )
        if current is None:
            return None
    return current


def _types_in(annotation: Any) -> set[type]:
    """The plain types an annotation admits: int | None -> {int, NoneType}."""
    if annotation is None:
        return set()
    if isinstance(annotation, type) and typing.get_origin(annotation) is None:
        return {annotation}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _types_in(args[0])
    if origin is typing.Union or origin is types.UnionType:
        return set().union(*(_types_in(a) for a in args))
    return set()
