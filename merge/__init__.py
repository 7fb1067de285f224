"""merge: tensor maths and checkpoint I/O for Balanced Actor Initialization.

Stage 1 merges instruct and reasoning, stage 2 merges that with pretrained. Knows
nothing of Ray, Optuna or lm-eval; usable on its own.

    import merge
    merge.merge_checkpoints(pretrained=P, instruct=I, reasoning=R, alpha=0.5, beta=0.9, out=OUT)
    sources = merge.SourceCache.load(pretrained=P, instruct=I, reasoning=R, device="cuda")
    merge.build_in_place(model, sources, alpha=0.5, beta=0.9)

One `MergePlan` carries a candidate's merge (models, ratios, methods, dtype, vocabulary
policy, tokenizer source) to either: `merge_checkpoints(plan, out=OUT)`,
`build_in_place(model, sources, plan)`. Merge methods are registered in `METHODS`
(`@merge.METHODS.register("name", needs_base=...)`), the only list of their names.

`import merge` is cheap: torch and the submodules load on first use of a name below.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from merge.errors import MergeError

# public name -> submodule that defines it (imported lazily: `import merge` stays light)
_EXPORTS = {
    "SourceCache": "merge.inplace",
    "build_in_place": "merge.inplace",
    "merge_checkpoints": "merge.disk",
    "MergeRecord": "merge.disk",
    "MergePlan": "merge.plan",
    "Stage": "merge.plan",
    "ROLES": "merge.plan",
    "inspect_checkpoint": "merge.checkpoint",
    "compatibility_problems": "merge.checkpoint",
    "CheckpointInfo": "merge.checkpoint",
    "METHODS": "merge.plugins",
    "get_method": "merge.methods",
    "method_param_names": "merge.methods",
    "set_kernel": "merge.kernels",
}

# Spelled out (not built from _EXPORTS) so that linters and type checkers see the public
# names; tests/merge/test_public_names.py checks that the two agree.
__all__ = [
    "MergeError",
    "SourceCache",
    "build_in_place",
    "merge_checkpoints",
    "MergeRecord",
    "MergePlan",
    "Stage",
    "ROLES",
    "inspect_checkpoint",
    "compatibility_problems",
    "CheckpointInfo",
    "METHODS",
    "get_method",
    "method_param_names",
    "set_kernel",
]

if TYPE_CHECKING:  # pragma: no cover
    from merge.checkpoint import CheckpointInfo, compatibility_problems, inspect_checkpoint
    from merge.disk import MergeRecord, merge_checkpoints
    from merge.inplace import SourceCache, build_in_place
    from merge.kernels import set_kernel
    from merge.methods import get_method, method_param_names
    from merge.plan import ROLES, MergePlan, Stage
    from merge.plugins import METHODS


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'merge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
