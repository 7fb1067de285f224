"""core.registry: one registry shape for every plug-in kind, lazy until an entry is used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from core.registry import Registry, UnknownName


def test_names_are_listed_without_importing_and_loaded_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "plug_mod.py").write_text("def scale(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry = Registry("thing", builtins={"scale": "plug_mod:scale"})
    assert reg.names() == ["scale"] and "scale" in reg
    assert "plug_mod" not in sys.modules
    assert reg.get("scale")(2) == 6
    assert "plug_mod" in sys.modules


def test_unknown_name_names_the_kind_and_every_known_name():
    reg: Registry = Registry("merge method", builtins={"linear": "x:y"})
    reg.add("ties", lambda: None)
    assert reg.problem("lineer") == "unknown merge method 'lineer'; known: linear, ties"
    assert reg.problem("ties") is None
    with pytest.raises(UnknownName) as info:
        reg.get("lineer")
    assert str(info.value) == "unknown merge method 'lineer'; known: linear, ties"


def test_decorator_metadata_and_a_taken_name_is_refused():
    reg: Registry = Registry("rule")

    @reg.register("a", needs_answer=True)
    def rule_a():
        return 1

    assert reg.get("a") is rule_a and reg.meta("a") == {"needs_answer": True}
    with pytest.raises(ValueError, match="rule 'a' is already registered"):
        reg.add("a", lambda: 2)
    reg.add("a", lambda: 2, replace=True)
    assert reg.get("a")() == 2 and reg.meta("a") == {}
    reg.remove("a")
    assert reg.names() == []


def test_a_lazy_builtin_whose_module_registers_itself_keeps_its_metadata(tmp_path, monkeypatch):
    """The built-in entries are named lazily and registered by their own module's decorator:
    importing that module must not count as a second registration, and the metadata comes
    from the decorator."""
    (tmp_path / "self_reg.py").write_text(
        textwrap.dedent(
            """
            from tests_registry_holder import REG

            @REG.register("m", needs_base=True)
            def m():
                return "m"
            """
        )
    )
    (tmp_path / "tests_registry_holder.py").write_text(
        "from core.registry import Registry\nREG = Registry('merge method', builtins={'m': 'self_reg:m'})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from tests_registry_holder import REG  # type: ignore[import-not-found]

    assert REG.meta("m") == {"needs_base": True} and REG.get("m")() == "m"


def test_importing_the_registries_imports_nothing_heavy():
    code = (
        "import sys, core.registry, merge.plugins, evals.plugins, sweep.plugins;"
        "heavy = [m for m in ('torch', 'optuna', 'lm_eval', 'pandas', 'ray') if m in sys.modules];"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
