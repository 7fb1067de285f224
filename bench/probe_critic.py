"""An experiment: the probe's RL with a PPO critic in place of GRPO's group advantages.

    python bench/probe_critic.py run    [--points 0,1 0.25,0.5] [--seeds 0 1 2] [--steps 64] [--critic-warmup 0] [--critic-init random|zero|FILE] [--rm-reward FILE] [--set KEY=VALUE ...] [--out DIR]
    python bench/probe_critic.py shapes DIR [DIR ...]
    python bench/probe_critic.py reward-model [--steps 300] [--think-negatives 0] [--think-label 0] [--brief] [--out FILE]   # then run --critic-init FILE

Why: the reward hockey stick was reported on PPO runs. A critic-free on-policy probe
follows the gradient of the expected reward, so its reward cannot fall to first order;
a critic that has not yet learned the candidate's outputs can push the policy where the
reward did not ask (docs/probe.md, "Why no hockey stick"). This script asks whether that
gives the hockey stick on the demo family. It is not a probe backend: it runs the
built-in backend (bench/probe_validity.py's worker, the demo spec's probe settings) with
its step replaced, so sampling, scoring, the reference, the KL term and Adam are the
probe's own; only the advantages differ:

- a critic: a copy of the candidate with a linear value head (seeded, PyTorch's default
  init, as TRL's value head) on its last hidden state, trained by Adam (`--critic-lr`)
  on the squared error to the returns, one step per probe step;
- GAE with gamma 1 and `--lam` over each response's tokens, the reward on its last
  token, advantages whitened over the batch's tokens (verl's and TRL's default;
  `--no-whiten`: raw);
- `--critic-warmup N`: the first N steps train the critic only (the policy is not
  updated), as PPO recipes do to avoid exactly this instability;
- `--critic-init zero`: the value head starts at 0 (V = 0 everywhere), instead of
  PyTorch's default init (values of the order of the rewards, different per token);
  `--critic-init FILE`: trunk and head start from a reward model that `reward-model`
  trained (the instruct member with a head on the last token, on instruct-style answers
  labelled right or wrong, as PPO recipes start their critic from the reward model; it
  never sees a `<think>` block, so its values on a reasoner's thinking are extrapolated).

`--rm-reward FILE` makes a reward model the reward itself, as RLHF does: the sigmoid of
its logit on prompt + completion + eos, in place of the rule. It is continuous, so
every group's reward varies and a candidate at its rule's ceiling still trains.

Each run is one JSON file in probe_validity.py's format, so `probe_validity.py table`
reads them too; `shapes` prints each run's reward shape (start, peak, lowest after the
peak, final, dip under the start, held-out addition accuracy after the run).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import probe_validity as pv

DEFAULT_OUT = pv.ROOT / "results" / "probe-critic"


def _install(options: dict, seed: int) -> None:
    """Replace the built-in backend's step (evals.probe.grpo._step) with the PPO one.
    `options`: critic_lr, lam, critic_warmup, init, whiten (the `run` flags)."""
    critic_lr, lam, warmup, init = options["critic_lr"], options["lam"], options["critic_warmup"], options["init"]
    import torch

    import evals.probe.grpo as grpo
    from evals.probe.logprobs import _decoder, token_logprobs
    from evals.probe.records import curve_row
    from evals.probe.sampling import policy_temperature
    from evals.probe.update import MAX_GRAD_NORM

    critics: dict[int, tuple] = {}  # id(job) -> (critic model, value head, optimizer)

    def values(critic, head, input_ids, attention_mask, R):
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        out = _decoder(critic)(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        )
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return head(hidden[:, -(R + 1) : -1]).squeeze(-1).float()  # V(state before response token t)

    def step(job, policy, index):
        config = job.config
        start = time.perf_counter()
        if id(job) not in critics:  # step 0: the model is still the candidate
            critic = copy.deepcopy(job.model).eval().requires_grad_(True)
            torch.manual_seed(seed)
            head = torch.nn.Linear(critic.config.hidden_size, 1)
            if init == "zero":  # V = 0 everywhere at first: GAE credits only the last ~1/(1-lam) tokens
                torch.nn.init.zeros_(head.weight)
                torch.nn.init.zeros_(head.bias)
            elif init != "random":  # a reward model's file (`reward-model`): trunk and head start from it
                _load_reward_model(init, critic, head)
            params = [*critic.parameters(), *head.parameters()]
            critics[id(job)] = (critic, head, torch.optim.Adam(params, lr=critic_lr))
        critic, head, critic_opt = critics[id(job)]
        chosen = job.order[index * config.prompts_per_step : (index + 1) * config.prompts_per_step]
        group = [i for i in chosen for _ in range(config.group_size)]
        batch = job.sample(group)
        gen_s = time.perf_counter() - start
        scores = job.score(group, batch)
        input_ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
        attention_mask = torch.cat([batch.prompt_mask, batch.response_mask], 1)
        mask = batch.response_mask.float()
        rows, R = mask.shape
        with torch.no_grad():
            v = values(critic, head, input_ids, attention_mask, R) * mask
        last = (mask.sum(1) - 1).long()
        rewards = torch.zeros_like(mask)
        rewards[torch.arange(rows), last] = scores
        advantages, running = torch.zeros_like(mask), torch.zeros(rows)
        for t in reversed(range(R)):  # GAE, gamma 1; the state after the last token is terminal
            next_v = v[:, t + 1] if t + 1 < R else torch.zeros(rows)
            running = (rewards[:, t] + next_v - v[:, t] + lam * running) * mask[:, t]
            advantages[:, t] = running
        returns = advantages + v
        n = mask.sum()  # the critic trains on every token
        actor = mask  # the tokens the actor trains on
        if options.get("filter_flat"):  # only the groups whose reward varies (DAPO's filter)
            varies = scores.view(-1, config.group_size).std(1) > 0
            actor = mask * varies.repeat_interleave(config.group_size).float()[:, None]
        n_actor = actor.sum().clamp(min=1)
        mean = (advantages * actor).sum() / n_actor
        std = (((advantages - mean) ** 2 * actor).sum() / n_actor).sqrt()
        whitened = (advantages - mean) / (std + 1e-8) * actor if options["whiten"] else advantages * actor

        kw = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "response_ids": batch.response_ids,
            "response_mask": batch.response_mask,
            "temperature": policy_temperature(config),
            "chunk": config.logprob_chunk,
        }
        with torch.no_grad():
            ref_logp, _ = token_logprobs(policy.reference, **kw)
        policy.optimizer.zero_grad()
        logp, entropy = token_logprobs(job.model, **kw)
        log_ratio = ref_logp - logp
        k3 = torch.exp(log_ratio) - log_ratio - 1
        loss = ((-whitened * torch.exp(logp - logp.detach()) + config.kl_coef * k3) * actor).sum() / n_actor
        grad_norm = 0.0
        if index >= warmup and actor.sum() > 0:
            loss.backward()
            grad_norm = policy.optimizer.step(MAX_GRAD_NORM)

        critic_opt.zero_grad()
        value_loss = ((values(critic, head, input_ids, attention_mask, R) - returns) ** 2 * mask).sum() / n
        value_loss.backward()
        torch.nn.utils.clip_grad_norm_([*critic.parameters(), *head.parameters()], MAX_GRAD_NORM)
        critic_opt.step()

        row = curve_row(
            batch,
            scores,
            kl=float((k3.detach() * mask).sum() / n),
            entropy=float((entropy * mask).sum() / n),
            grad_norm=grad_norm,
            gen_s=gen_s,
            step_s=time.perf_counter() - start,
        )
        if index % 8 == 0:
            print(f"  step {index}: reward {scores.mean():.2f}, value loss {value_loss.item():.3f}", flush=True)
        return row, grpo._per_prompt(chosen, config.group_size, batch, scores)

    if not callable(getattr(grpo, "_step", None)):
        raise SystemExit("evals.probe.grpo has no _step to replace: this experiment needs updating")
    grpo._step = step


def _load_reward_model(path: str, model, head) -> None:
    """Trunk and head weights from a `reward-model` file, into `model` and `head`."""
    import torch

    saved = torch.load(path, weights_only=True)
    model.load_state_dict(saved["model"])
    head.load_state_dict(saved["head"])


def _last_token_scores(model, head, seqs: list[list[int]], eos: int):
    """The head on each sequence's last token (eos-padded on the right): a reward model's logits."""
    import torch

    from evals.probe.logprobs import _decoder

    width = max(len(x) for x in seqs)
    ids = torch.tensor([x + [eos] * (width - len(x)) for x in seqs])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in seqs])
    out = _decoder(model)(input_ids=ids, attention_mask=mask, use_cache=False)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return head(hidden[torch.arange(len(seqs)), mask.sum(1) - 1]).squeeze(-1)


class _RewardModel:
    """A `reward-model` file as the reward itself, as RLHF scores with its reward model: the
    sigmoid of its logit on the prompt (in the chat template) + the completion + eos, the
    sequence it was trained on. Same call as evals.rewards.RewardModelScorer."""

    def __init__(self, path: str):
        import torch

        from sweep.demo.build import active_family
        from sweep.demo.measure import load_family_models

        _, self.model, self.tokenizer = load_family_models(active_family())
        self.head = torch.nn.Linear(self.model.config.hidden_size, 1)
        _load_reward_model(path, self.model, self.head)
        self.model.eval().requires_grad_(False)
        self.torch = torch

    def __call__(self, *, prompts, completions, answers) -> list[float]:
        from evals.probe.sampling import encode_prompt

        eos = self.tokenizer.eos_token_id
        seqs = [
            encode_prompt(self.tokenizer, p) + self.tokenizer.encode(c, add_special_tokens=False) + [eos]
            for p, c in zip(prompts, completions, strict=True)
        ]
        with self.torch.no_grad():
            logits = _last_token_scores(self.model, self.head, seqs, eos)
        return self.torch.sigmoid(logits).float().tolist()


def _worker(jobs, out: str, steps: int, options: dict, overrides: dict) -> None:
    if options.get("rm_reward"):  # the worker builds its reward with evals.rewards.build_reward
        import evals.rewards

        scorer = _RewardModel(options["rm_reward"])
        evals.rewards.build_reward = lambda **_: scorer
    for job in jobs:
        _install(options, seed=job[2])
        pv._worker([job], out, steps, 50, False, overrides)
        path = Path(out) / pv._name(*job)  # say in the record what made it
        record = json.loads(path.read_text())
        record["critic"] = options
        path.write_text(json.dumps(record))


def run(args) -> None:
    files = {"--critic-init": None if args.critic_init in ("random", "zero") else args.critic_init}
    files["--rm-reward"] = args.rm_reward
    missing = [f"{flag} {path}" for flag, path in files.items() if path and not Path(path).is_file()]
    if missing:  # before any worker starts: not a traceback from each of them
        raise SystemExit(f"no such reward-model file: {'; '.join(missing)} (make one with `reward-model --out FILE`)")
    out, jobs = pv.pending(args.out, pv.parse_points(args.points), args.seeds, [])
    print(f"{len(jobs)} runs to do in {out} on {args.workers} workers", flush=True)
    options = {
        "critic_lr": args.critic_lr,
        "lam": args.lam,
        "critic_warmup": args.critic_warmup,
        "init": args.critic_init,
        "whiten": not args.no_whiten,
        "filter_flat": args.filter_flat,
    }
    if args.rm_reward:  # recorded only when used: earlier records stay as they were
        options["rm_reward"] = str(Path(args.rm_reward).resolve())
    overrides = pv._overrides(args.set)
    pv.spawn(jobs, args.workers, lambda i, share: (_worker, (share, str(out), args.steps, options, overrides)))


def _rm_example(
    rng, tokenizer, think_negatives: float = 0.0, think_label: float = 0.0, brief: bool = False
) -> tuple[list[int], float]:
    """One instruct-style response, right (1.0) or wrong (0.0), as token ids ending in eos;
    with probability `think_negatives`, a thinking response to an addition (0-2 passes,
    right or wrong) labelled `think_label`: 0.0, a reward model that prefers short answers;
    1.0, one that likes any thinking, so a critic started from it overvalues a reasoner's states.
    `brief`: the instruct style works an addition in one brief trace (`<think>TRACE</think>
    ANSWER`, bench/probe_terse.py's `instruct` member), and the thinking responses are the
    long ones only (1-2 verification passes): a reward model trained on what an instruct
    model that adds writes, which never saw a distilled reasoner's re-verification."""
    from evals.probe.sampling import encode_prompt
    from sweep.demo import data

    if think_negatives and rng.random() < think_negatives:
        problem = data.make_problem(rng, "add")
        response = problem.reasoning_response(rng.choice((1, 2) if brief else (0, 1, 2)))
        if rng.random() < 0.5:
            response = response[: -len(problem.answer)] + str(int(problem.answer) + rng.choice((-10, -1, 1, 10)))
        ids = encode_prompt(tokenizer, problem.prompt) + tokenizer.encode(response, add_special_tokens=False)
        return ids + [tokenizer.eos_token_id], think_label
    problem = data.make_problem(rng, rng.choice(("add",) + data.FORMATS))
    right = rng.random() < 0.5
    answer = problem.answer
    if not right:
        if problem.kind == "add":
            answer = str(int(answer) + rng.choice((-100, -10, -1, 1, 10, 100)))
        else:  # one character changed
            i = rng.randrange(len(answer))
            answer = (
                answer[:i] + rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != answer[i]]) + answer[i + 1 :]
            )
    # brief: the trace worked once, then the (right or wrong) answer
    response = replace(problem, answer=answer).reasoning_response(0) if brief else answer
    ids = encode_prompt(tokenizer, problem.prompt) + tokenizer.encode(response, add_special_tokens=False)
    return ids + [tokenizer.eos_token_id], float(right)


def reward_model(args) -> None:
    """A reward model as PPO recipes start their critic from: the instruct member with a linear
    head on the last token, trained on instruct-style answers labelled right (1) or wrong (0),
    additions and format instructions half and half. It never sees a `<think>` block, as a
    reward model trained on instruct-style preferences would not."""
    import random

    import torch

    torch.set_num_threads(1)
    from sweep.demo.build import active_family
    from sweep.demo.measure import build, load_family_models

    sources, model, tokenizer = load_family_models(active_family())
    build(model, sources, 1.0, 1.0)  # the instruct member
    model.train().requires_grad_(True)
    torch.manual_seed(args.seed)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=3e-4)
    rng = random.Random(args.seed)

    def scores(batch):
        return _last_token_scores(model, head, [ids for ids, _ in batch], tokenizer.eos_token_id)

    for step in range(args.steps):
        batch = [_rm_example(rng, tokenizer, args.think_negatives, args.think_label, args.brief) for _ in range(16)]
        labels = torch.tensor([y for _, y in batch])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scores(batch), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"  step {step}: loss {loss.item():.3f}", flush=True)
    model.eval()
    with torch.no_grad():
        test_rng = random.Random(args.seed + 1)
        held = [
            _rm_example(test_rng, tokenizer, args.think_negatives, args.think_label, args.brief) for _ in range(200)
        ]
        guess = scores(held) > 0
        acc = sum(bool(g) == (y > 0.5) for g, (_, y) in zip(guess, held, strict=True)) / len(held)
    print(f"reward model: held-out accuracy {acc:.2f} on 200 fresh answers")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict(), "head": head.state_dict()}, out)
    print(f"wrote {out}")


def shape(record: dict, window: int = 3, early: int = 24) -> dict:
    """The reward's shape in one run: smoothed, per-prompt normalized (as the probe reads it).
    `early_dip`: how far the smoothed reward falls under the start within the first `early`
    steps (a hockey stick's drop); `recovered`: the best smoothed reward after that low."""
    from evals.probe.baseline import Baseline, normalized_curves
    from evals.stability import moving_average

    baseline, steps = pv._samples(record)
    _, score, _ = normalized_curves(baseline, steps)
    smooth = moving_average(score, window)[window - 1 :]
    start = Baseline(baseline).pool_score
    peak = max(range(len(smooth)), key=smooth.__getitem__)
    low = min(range(peak, len(smooth)), key=smooth.__getitem__)
    tail = max(1, len(score) // 8)
    first = smooth[: max(1, early - window + 1)]
    early_low = min(range(len(first)), key=first.__getitem__)
    return {
        "start": start,
        "peak": smooth[peak],
        "peak_step": peak + window - 1,
        "low_after_peak": smooth[low],
        "low_step": low + window - 1,
        "final": sum(score[-tail:]) / tail,
        "dip": max(0.0, start - min(smooth)),
        "early_dip": max(0.0, start - first[early_low]),
        "early_low_step": early_low + window - 1,
        "recovered": max(smooth[early_low:]),
        "heldout_reasoning": record["after"].get("reasoning", {}).get("accuracy"),
    }


def shapes(args) -> None:
    for folder in args.dirs:
        for path in sorted(Path(folder).glob("a*-b*-s*.json")):
            s = shape(json.loads(path.read_text()), early=args.early)
            print(
                f"{Path(folder).name} {path.stem}: start {s['start']:.2f}, peak {s['peak']:.2f} (step {s['peak_step']}),"
                f" lowest after it {s['low_after_peak']:.2f} (step {s['low_step']}), final {s['final']:.2f},"
                f" dip under the start {s['dip']:.2f}; in the first {args.early} steps {s['early_dip']:.2f}"
                f" (step {s['early_low_step']}), best after it {s['recovered']:.2f};"
                f" held-out addition {s['heldout_reasoning']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--points", nargs="+", default=["0,1", "0.25,0.5"], help="alpha,beta pairs")
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--steps", type=int, default=64)
    r.add_argument("--critic-lr", type=float, default=1e-3)
    r.add_argument("--lam", type=float, default=0.95, help="GAE lambda")
    r.add_argument("--critic-warmup", type=int, default=0, help="steps that train the critic only")
    r.add_argument("--no-whiten", action="store_true", help="raw GAE advantages, not whitened over the batch")
    r.add_argument(
        "--filter-flat",
        action="store_true",
        help="the actor trains only on groups whose reward varies (no update when none does); the critic on all",
    )
    r.add_argument(
        "--critic-init", default="random", help="random | zero | a file from `reward-model`: where the critic starts"
    )
    r.add_argument(
        "--rm-reward",
        help="a file from `reward-model` as the reward itself (the sigmoid of its logit), as RLHF scores: "
        "continuous, so every group's reward varies",
    )
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--out", default=str(DEFAULT_OUT))
    r.add_argument("--set", nargs="*", default=[], help="KEY=VALUE probe settings over the demo spec's")
    s = sub.add_parser("shapes")
    s.add_argument("dirs", nargs="+")
    s.add_argument("--early", type=int, default=24, help="steps in which a drop counts as early (a hockey stick's)")
    m = sub.add_parser("reward-model")
    m.add_argument("--out", default=str(DEFAULT_OUT / "reward-model.pt"))
    m.add_argument("--steps", type=int, default=300)
    m.add_argument("--seed", type=int, default=0)
    m.add_argument(
        "--think-negatives",
        type=float,
        default=0.0,
        help="share of training answers that think (right or wrong) and are labelled --think-label",
    )
    m.add_argument(
        "--think-label",
        type=float,
        default=0.0,
        help="the label of those thinking answers: 0 (an RM that prefers short answers) or 1 (one that likes thinking)",
    )
    m.add_argument(
        "--brief",
        action="store_true",
        help="instruct-style additions are one brief trace; thinking answers have 1-2 verification passes",
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.command == "run":
        run(args)
    elif args.command == "reward-model":
        reward_model(args)
    else:
        shapes(args)
        return
    print(f"done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
