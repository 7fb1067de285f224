"""`evals.probe.reference`: a KL reference other than the candidate, on real tiny
checkpoints. The KL is then not 0 at the start, the term pulls the policy toward the
reference, and the model still comes back as it was given."""

from __future__ import annotations

import pytest

from evals.errors import EvalError
from evals.probe import ProbeBackend, ProbeConfig, Prompt, register_backend, run_probe
from tests.evals.conftest import PROBE_PROMPTS
from tests.evals.test_probe import load

PROMPTS = [Prompt(prompt=p, answer=a) for p, a in PROBE_PROMPTS]


def nothing(*, prompts, completions, answers):
    """No reward signal at all: only the KL term moves the policy."""
    return [0.0 for _ in completions]


@pytest.fixture(scope="module")
def sft_dir(tiny_dir, tmp_path_factory):
    """A "fine-tune" of the probe's tiny model: same vocabulary, other weights."""
    from tests.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("reference") / "sft", seed=7, base=tiny_dir, noise=0.2)


def config(**changes) -> ProbeConfig:
    base = dict(prompts="unused.jsonl", steps=8, max_new_tokens=16, seed=0, kl_coef=1.0, skip_flat_batches=False)
    return ProbeConfig(**(base | changes))


@pytest.mark.parametrize("update", ["full", "lora"])
def test_a_reference_pulls_the_policy_toward_it_and_the_model_comes_back(tiny_dir, sft_dir, update):
    """With no reward, the KL term alone moves the policy: against the candidate itself
    the KL stays 0 (nothing pulls), against another model it starts above 0 and falls as
    the policy moves toward that model. Afterwards the model is the one given, bit for bit."""
    import torch

    model, tokenizer = load(tiny_dir)
    with torch.no_grad():  # a trained model's logit scale, so the adapters can move it (see test_probe)
        model.model.norm.weight.mul_(10.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    changes = dict(update=update, lora_rank=4, learning_rate=1e-2 if update == "lora" else 3e-3)
    own = run_probe(model, tokenizer, config=config(**changes), prompts=PROMPTS, reward=nothing)
    pulled = run_probe(
        model, tokenizer, config=config(reference=str(sft_dir), **changes), prompts=PROMPTS, reward=nothing
    )
    assert max(own.curves.kl) < 1e-6, own.curves.kl
    kl = pulled.curves.kl
    assert kl[0] > 0.05, kl
    assert sum(kl[-2:]) / 2 < 0.7 * kl[0], kl  # measured: full 3.28 -> 0.65, lora 3.28 -> 1.14
    assert all(u == 1 for u in pulled.curves.updated)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())


def test_the_reference_loads_once_per_process(tiny_dir, sft_dir):
    from evals.probe.reference import load_reference

    model, _ = load(tiny_dir)
    first = load_reference(str(sft_dir), like=model)
    assert load_reference(str(sft_dir), like=model) is first
    assert not any(p.requires_grad for p in first.parameters()) and not first.training


def test_a_reference_with_another_vocabulary_fails_before_any_step(tiny_dir, tmp_path):
    from tests.tiny import make_tiny_checkpoint

    other = make_tiny_checkpoint(tmp_path / "other", seed=3, vocab_extra=8)
    model, tokenizer = load(tiny_dir)
    seen = []

    def counting(*, prompts, completions, answers):
        seen.append(len(completions))
        return [0.0] * len(completions)

    with pytest.raises(
        EvalError, match=r"evals.probe.reference: .*other has a vocabulary of 91 tokens and the candidate 83"
    ):
        run_probe(model, tokenizer, config=config(reference=str(other)), prompts=PROMPTS, reward=counting)
    assert seen == []
    with pytest.raises(EvalError, match=r"evals.probe.reference: .*nowhere: no such checkpoint folder"):
        run_probe(
            model, tokenizer, config=config(reference=str(tmp_path / "nowhere")), prompts=PROMPTS, reward=counting
        )


class _NoReference(ProbeBackend):
    def run(self, model, tokenizer, *, config, prompts, reward, rollouts=None):
        raise AssertionError("must not run")


def test_a_backend_that_ignores_the_reference_is_refused(tiny_dir, sft_dir):
    register_backend("test-no-reference", _NoReference, replace=True)
    model, tokenizer = load(tiny_dir)
    with pytest.raises(EvalError, match="probe backend 'test-no-reference' does not take a KL reference"):
        run_probe(
            model,
            tokenizer,
            config=config(backend="test-no-reference", reference=str(sft_dir)),
            prompts=PROMPTS,
            reward=nothing,
        )
