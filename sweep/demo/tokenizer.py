"""A character-level tokenizer built locally: exact round-trips, no downloads.

Every character of `alphabet` is one token; `<think>` and `</think>` are single tokens.
Saved in HF format with eos/pad/bos and a chat template, so transformers, generate()
and lm-eval use it like any other tokenizer.

`<think>`/`</think>` are added as *non-special* tokens: lm-eval decodes generations with
`skip_special_tokens=True`, which would otherwise delete them and hide where thinking ends.
"""

from __future__ import annotations

import string

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
THINK_TOKENS = ["<think>", "</think>"]
THINK_START, THINK_END = THINK_TOKENS
DEFAULT_ALPHABET = string.ascii_letters + string.digits + " +-*=:,.?!()/'\n"

# User turns become "Q: ...\n", assistant turns "A: ...<eos>"; generation starts after "A: ".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}Q: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}A: {{ message['content'] }}<eos>"
    "{% elif message['role'] == 'system' %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}"
)


def build_char_tokenizer(alphabet: str = DEFAULT_ALPHABET):
    """A PreTrainedTokenizerFast over single characters plus the special and think tokens.

    Ids: the 4 special tokens, then `<think>`, `</think>`, then the sorted alphabet.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(alphabet))
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + THINK_TOKENS + chars)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    core.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
