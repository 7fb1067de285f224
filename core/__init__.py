"""core: the two pieces that merge/, evals/ and sweep/ share, and nothing else.

- core.registry.Registry: one shape for every kind of plug-in (merge methods, samplers,
  lm-eval backends, probe backends, reward rules, balanced rules).
- core.errors.UserError: the root of every error the user can fix (exit code, problems).

It imports nothing heavy and nothing from the three packages above it.
"""
