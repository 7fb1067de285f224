"""Rule rewards and a real (tiny) reward-model checkpoint."""

from __future__ import annotations

import pytest

from evals.errors import EvalError
from evals.rewards import RewardModelScorer, build_reward, exact_match, final_answer, format_check, get_rule


@pytest.mark.parametrize(
    "text, answer",
    [
        ("<think>7+9=16</think> 16", "16"),
        ("  42 \n", "42"),
        ("<think>a</think>x</think> y ", "y"),  # after the LAST </think>
        ("<think>still thinking", ""),  # truncated mid-thought: no final answer
        ("", ""),
    ],
)
def test_final_answer(text, answer):
    assert final_answer(text) == answer


def test_exact_match_compares_final_answers_and_ignores_length():
    completions = ["<think>" + "x" * 50 + "</think> 12", "12", " 12 ", "<think>12", "13"]
    scores = exact_match(prompts=["q"] * 5, completions=completions, answers=["12"] * 5)
    assert scores == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_format_check():
    completions = [
        "<think>t</think> 5",
        "5",
        "<think>t</think>",
        "<think>t",
        "a</think> 5",
        "<think>a</think><think>b</think> 5",
        "  ",
    ]
    assert format_check(prompts=["q"] * 7, completions=completions, answers=[None] * 7) == [
        1.0,
        1.0,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]


def test_combined_rule_sums():
    rule = get_rule("exact_match+format")
    assert rule(
        prompts=["q", "q", "q"],
        completions=["<think>t</think> 3", "<think>t</think> 4", "<think>3"],
        answers=["3", "3", "3"],
    ) == [2.0, 1.0, 0.0]


def test_unknown_rule_and_missing_model_are_user_errors(tmp_path):
    with pytest.raises(EvalError, match="unknown reward rule 'exact'"):
        get_rule("exact")
    with pytest.raises(EvalError, match="no such checkpoint"):
        build_reward(rule=None, model=str(tmp_path / "missing"))


def make_reward_model(path, *, num_labels: int = 1):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from sweep.demo.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    return make_reward_model(tmp_path_factory.mktemp("rm") / "rm")


def test_reward_model_scores_match_a_direct_forward(reward_model_dir):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)
    scorer = build_reward(rule=None, model=str(reward_model_dir))
    assert isinstance(scorer, RewardModelScorer)
    completions = ["12", "<think>1+1</think> 2", "a much longer answer here"]
    scores = scorer(prompts=["1+11", "1+1", "say hi"], completions=completions, answers=[None] * 3)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
    for prompt, completion, score in zip(["1+11", "1+1", "say hi"], completions, scores, strict=True):
        text = f"Q: {prompt}\nA: {completion}<eos>"  # the checkpoint's chat template
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            assert score == pytest.approx(model(**ids).logits[0, 0].item(), abs=1e-5)
    assert len(set(scores)) == 3  # padding in the batch does not blur the texts together


def test_reward_model_with_two_labels_is_refused(tmp_path):
    make_reward_model(tmp_path / "rm2", num_labels=2)
    with pytest.raises(EvalError, match="num_labels=1"):
        RewardModelScorer(tmp_path / "rm2")


def test_rules_under_a_chat_template_that_opens_think():
    """DeepSeek-R1-Distill-style templates end the prompt with "<think>\\n": the completion
    starts mid-thought. With the tag put back (as the probe does), rules read it right."""
    from evals.rewards import with_opened_think

    raw = ["\n7+5=12</think> 12", "12", "still thinking", "x</think> 12 <think>again</think> 12"]
    completions = [with_opened_think(c) for c in raw]
    assert [final_answer(c) for c in completions] == ["12", "", "", "12"]
    assert exact_match(prompts=["q"] * 4, completions=completions, answers=["12"] * 4) == [1.0, 0.0, 0.0, 1.0]
    # one think block, closed, then an answer: only the first is well-formed
    assert format_check(prompts=["q"] * 4, completions=completions, answers=[None] * 4) == [1.0, 0.0, 0.0, 0.0]
    # read raw, the unclosed thought "12" would have counted as a direct answer
    assert exact_match(prompts=["q"], completions=[raw[1]], answers=["12"]) == [1.0]
