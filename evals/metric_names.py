"""Stable metric names users put in specs. Kept import-free so the spec loader stays light."""

# Names of the stability metrics computed from probe curves; specs refer to them as probe/<name>.
PROBE_METRICS = (
    "length_retention",  # min(length) / length[0]; collapse when well below 1
    "length_growth",  # length[-1] / length[0]; > 1 is BAI's continuous length improvement
    "reward_dip",  # max(0, reward[0] - min(reward)), in reward units: the hockey stick's depth
    # how far the dip goes beyond what a run that learned nothing reads (a null simulated from
    # the baseline's samples): 0 for a no-learning run; None without a baseline or noise_samples
    "reward_fall",
    "reward_recovery_step",  # first step after the minimum with reward >= reward[0]; absent if none
    "reward_steps_to_recover",  # always defined: 0 with no dip, the recovery step, or the step count if none
    "reward_final",  # reward[-1]
    "reward_gain",  # reward[-1] - reward[0]: what the probe's RL added; predicts a long run's final reward
    "kl_final",  # KL to the initial candidate at the last step
    "entropy_drop",  # entropy[0] - min(entropy)
    "stopped_early",  # 1.0 when the probe stopped early (collapse or divergence), else 0.0
    "diverged",  # 1.0 when the probe's loss, gradient or KL went non-finite (the others are then worst-case), else 0.0
    # share of the steps (of the mini-batches, with mini_batches > 1) that updated the policy;
    # the rest were flat batches (no group's reward varied, skip_flat_batches). Low: the probe
    # saw little signal. None when the backend does not say
    "update_share",
)

NOISE_SUFFIX = "_noise"  # probe/<name>_noise: half-width of <name>'s noise band (docs/probe.md)


def lm_eval_metric_name(task: str, metric: str, filter_name: str) -> str:
    """`lm_eval/<task>/<metric>,<filter>`, e.g. lm_eval/gsm8k/exact_match,strict-match."""
    return f"lm_eval/{task}/{metric},{filter_name}"


def probe_metric_name(name: str) -> str:
    return f"probe/{name}"


def noise_metric_name(name: str) -> str:
    """`probe/<name>_noise`: the noise band of probe/<name> (a half-width, in its units)."""
    return f"probe/{name}{NOISE_SUFFIX}"
