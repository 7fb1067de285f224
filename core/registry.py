"""One registry shape for every kind of plug-in, and the only source of plug-in names.

A registry maps a name to an object (a merge function, a sampler factory, a backend
class). Built-in entries are named as "module:attribute" strings and imported on first
use, so asking for the names (which is what validating a spec does) imports nothing:

    METHODS = Registry("merge method", builtins={"linear": "merge.methods:linear"})
    METHODS.names()              # ['linear'], no import
    METHODS.get("linear")        # imports merge.methods, returns the function
    METHODS.problem("lineer")    # "unknown merge method 'lineer'; known: linear"

A plug-in registers itself with the decorator (or `add`), with optional metadata:

    @METHODS.register("my_method", needs_base=True)
    def my_method(...): ...

Entries registered in a process exist in that process only: Ray workers import the
modules named in the spec's `plugins:` list before they build anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """`get` of a name nobody registered. str() is the message, with the known names."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Named plug-ins of one kind. `kind` names the kind in messages ("merge method")."""

    def __init__(self, kind: str, *, builtins: dict[str, str] | None = None):
        self.kind = kind
        self._lazy: dict[str, str] = dict(builtins or {})  # name -> "module:attribute"
        self._loaded: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------ registering

    def add(self, name: str, obj: T | str, *, replace: bool = False, **meta: Any) -> None:
        """Register `obj` (or a lazy "module:attribute" string) under `name`, with `meta`.

        Registering a taken name is an error unless `replace=True`: two plug-ins silently
        sharing a name would make a spec mean different things in different processes.
        """
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a non-empty string name, not {name!r}")
        if not replace and name in self and not self._same(name, obj):
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to override it)")
        self._loaded.pop(name, None)
        self._lazy.pop(name, None)
        if isinstance(obj, str):
            if ":" not in obj:
                raise ValueError(f"a lazy {self.kind} is 'module:attribute', not {obj!r}")
            self._lazy[name] = obj
        else:
            self._loaded[name] = obj
        self._meta[name] = dict(meta)

    def register(self, name: str, *, replace: bool = False, **meta: Any) -> Callable[[T], T]:
        """Decorator form of `add`: `@REGISTRY.register("name", key=value)`."""

        def deco(obj: T) -> T:
            self.add(name, obj, replace=replace, **meta)
            return obj

        return deco

    def remove(self, name: str) -> None:
        """Forget `name` (tests that register a plug-in clean up with this)."""
        self._loaded.pop(name, None)
        self._lazy.pop(name, None)
        self._meta.pop(name, None)

    # ------------------------------------------------------------ asking

    def names(self) -> list[str]:
        """Every registered name, sorted. Imports nothing."""
        return sorted(set(self._loaded) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def problem(self, name: object) -> str | None:
        """None if `name` is registered, else the message naming it and the known names."""
        if name in self:
            return None
        return f"unknown {self.kind} {name!r}; known: {', '.join(self.names()) or '(none registered)'}"

    def get(self, name: str) -> T:
        """The object registered as `name`, imported on first use. UnknownName if none."""
        if name in self._loaded:
            return self._loaded[name]
        target = self._lazy.get(name)
        if target is None:
            raise UnknownName(self.problem(name))
        module, _, attr = target.partition(":")
        obj = getattr(importlib.import_module(module), attr)
        # importing the module may have registered the entry itself (a decorator): keep that
        self._loaded.setdefault(name, obj)
        self._lazy.pop(name, None)
        return self._loaded[name]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata given at registration (after loading, for a lazy entry)."""
        self.get(name)
        return dict(self._meta.get(name, {}))

    def items(self) -> list[tuple[str, T]]:
        """(name, object) for every entry, loading the lazy ones (contract tests use this)."""
        return [(name, self.get(name)) for name in self.names()]

    def _same(self, name: str, obj: T | str) -> bool:
        # the same thing registered again: a lazy built-in's module registering it by its
        # decorator on first import, or a module imported twice
        target = obj if isinstance(obj, str) else _qualname(obj)
        if name in self._lazy:
            return target == self._lazy[name]
        loaded = self._loaded[name]
        return loaded is obj or (not isinstance(obj, str) and target == _qualname(loaded))

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
