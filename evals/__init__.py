"""evals: lm-eval capability scores, the RLHF probe and stability metrics.

Knows nothing of Ray or Optuna. Importing this package is cheap: lm-eval, torch-heavy
parts and vLLM load only in the modules that use them.
"""
