"""Probe rollouts through vLLM: at temperature 0 they equal HF greedy rollouts, before and after weight pushes."""

from __future__ import annotations

import pytest
import torch

from evals.probe.vllm_rollout import VllmRollouts
from tests.evals.conftest import load

MAX_NEW = 24


def _hf_greedy(model, prompts, *, group_size, eos_id):
    rows = []
    for ids in prompts:
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            eos_token_id=eos_id,
            pad_token_id=eos_id,
        )
        rows += [out[0, len(ids) :].tolist()] * group_size
    return rows


def test_greedy_vllm_rollouts_equal_hf_before_and_after_weight_pushes(trio):
    import merge

    model, tokenizer = load(trio["instruct"])
    model.eval()
    eos = tokenizer.eos_token_id
    # short prompts, and one longer than a 128-token KV block (a stale prefix cache would show there)
    prompts = [tokenizer.encode(t) for t in ("3+4=", "8+8=", "2+9=", "reverse " + "abcdefgh" * 18 + " = 1+1=")]
    assert len(prompts[-1]) > 140
    engine = VllmRollouts.build(trio["engine_base"], dtype="float32", max_model_len=256)
    engine.push_weights(model)
    sources = merge.SourceCache.load(
        pretrained=trio["pretrained"], instruct=trio["instruct"], reasoning=trio["reasoning"]
    )
    seen = set()
    for step, (alpha, beta) in enumerate([(1.0, 1.0), (0.0, 1.0), (0.5, 0.5)]):
        if step:
            merge.build_in_place(model, sources, alpha=alpha, beta=beta)
            changed = [n for n, p in model.named_parameters() if p.requires_grad]  # all, named as vLLM wants them
            engine.push_weights(model, names=changed + ["lm_head.weight"])
        batch = engine.sample(
            prompts,
            group_size=2,
            max_new_tokens=MAX_NEW,
            temperature=0.0,
            seed=step,
            eos_ids={eos},
            pad_id=tokenizer.pad_token_id,
        )
        expected = _hf_greedy(model, prompts, group_size=2, eos_id=eos)
        got = [batch.response_ids[i, : batch.lengths[i]].tolist() for i in range(len(expected))]
        assert got == expected, (alpha, beta)
        assert batch.response_ids.shape[0] == 8 and batch.prompt_ids.shape[0] == 8
        for i, row in enumerate(expected):
            ended = row[-1] == eos
            assert bool(batch.truncated[i]) == (not ended and len(row) == MAX_NEW)
            assert batch.completions[i] == (row[:-1] if ended else row)
            assert batch.texts[i] == tokenizer.decode(batch.completions[i], skip_special_tokens=True)
        seen.add(tuple(map(tuple, got)))
    assert len(seen) == 3 and engine.pushes == 3  # each candidate's rollouts differ


def test_sampled_rollouts_are_seeded_and_grouped(trio):
    model, tokenizer = load(trio["pretrained"])
    engine = VllmRollouts.build(trio["pretrained"], dtype="float32", max_model_len=256)
    prompts = [tokenizer.encode("3+4="), tokenizer.encode("6+1=")]
    kw = dict(
        group_size=4,
        max_new_tokens=16,
        temperature=1.5,
        eos_ids={tokenizer.eos_token_id},
        pad_id=tokenizer.pad_token_id,
    )
    first, again, other = (
        engine.sample(prompts, seed=3, **kw),
        engine.sample(prompts, seed=3, **kw),
        engine.sample(prompts, seed=4, **kw),
    )
    assert torch.equal(first.response_ids, again.response_ids)
    assert not torch.equal(first.response_ids, other.response_ids)
    assert first.response_ids.shape[0] == 8
    assert len({tuple(first.response_ids[i].tolist()) for i in range(4)}) > 1  # a group's samples differ
    assert (first.prompt_ids[:4] == first.prompt_ids[0]).all() and not torch.equal(
        first.prompt_ids[0], first.prompt_ids[4]
    )


def test_a_probe_loop_on_vllm_rollouts_keeps_the_engine_in_step_with_the_trained_model(trio):
    """Sample with vLLM, update with the chunked GRPO step, push the changed weights: the
    engine's greedy tokens then equal the updated HF model's, step after step. The updates
    must change the greedy output, or a stale engine would pass unnoticed."""
    from evals.probe.logprobs import grpo_update

    model, tokenizer = load(trio["pretrained"])
    model.eval()
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    engine = VllmRollouts.build(trio["engine_base"], dtype="float32", max_model_len=256)
    engine.push_weights(model)
    reference = load(trio["pretrained"])[0].eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    prompts = [tokenizer.encode(t) for t in ("3+4=", "2+5=")]
    before = _hf_greedy(model, prompts, group_size=1, eos_id=eos)
    for step in range(3):
        batch = engine.sample(
            prompts, group_size=4, max_new_tokens=16, temperature=1.0, seed=step, eos_ids={eos}, pad_id=pad
        )
        # Push down whatever the engine sampled. A group-normalized reward can be zero for
        # every row (a sharp model samples one completion 4 times: no variance, no update),
        # which on one machine left the greedy output unchanged after 3 steps; this always
        # moves the policy (tokens changed after 3 steps on trio seeds 3-6: 20-43 of ~30 x 2).
        advantages = -torch.ones(batch.response_ids.shape[0])
        model.requires_grad_(True)
        grpo_update(
            model,
            reference,
            optimizer,
            input_ids=torch.cat([batch.prompt_ids, batch.response_ids], 1),
            attention_mask=torch.cat([batch.prompt_mask, batch.response_mask], 1),
            response_ids=batch.response_ids,
            response_mask=batch.response_mask,
            advantages=advantages,
            kl_coef=0.01,
            micro_batch_size=3,
            chunk=16,
        )
        model.requires_grad_(False)
        engine.push_weights(model)
        greedy = engine.sample(
            prompts, group_size=1, max_new_tokens=MAX_NEW, temperature=0.0, seed=0, eos_ids={eos}, pad_id=pad
        )
        expected = _hf_greedy(model, prompts, group_size=1, eos_id=eos)
        assert [greedy.response_ids[i, : greedy.lengths[i]].tolist() for i in range(2)] == expected, step
    assert expected != before  # the updates changed what the model says


def test_building_an_engine_shuts_down_the_one_before_so_its_teardown_cannot_break_the_new_one(trio):
    """An in-process engine's teardown destroys vLLM's process-wide parallel state; collected
    after a second engine was built, it broke that one ("pipeline model parallel group is
    not initialized" at its next generate). Building an engine now shuts the earlier one
    down first: the new one keeps working after the old object is collected, and the old
    one says why it is closed instead of failing deep inside vLLM."""
    import gc

    from evals.errors import EvalError

    _, tokenizer = load(trio["pretrained"])
    kw = dict(group_size=1, max_new_tokens=6, temperature=0.0, seed=0, eos_ids={tokenizer.eos_token_id}, pad_id=0)
    prompts = [tokenizer.encode("3+4=")]
    first = VllmRollouts.build(trio["pretrained"], dtype="float32", max_model_len=128)
    expected = first.sample(prompts, **kw).completions
    second = VllmRollouts.build(trio["pretrained"], dtype="float32", max_model_len=128)
    with pytest.raises(EvalError, match="shut down because another was built"):
        first.sample(prompts, **kw)
    del first
    gc.collect()  # the old engine's finalizer already ran: nothing is torn down under the new one
    assert second.sample(prompts, **kw).completions == expected
    second.close()
