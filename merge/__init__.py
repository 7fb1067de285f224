"""merge: tensor maths and checkpoint I/O for Balanced Actor Initialization.

Stage 1 merges instruct and reasoning, stage 2 merges that with pretrained. Knows
nothing of Ray, Optuna or lm-eval; usable on its own.
"""
