"""The local 0-100 judge: one answer distribution gives one score, whatever the tokenizer."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ftflow.evaluation.judge import (
    DEFAULT_MIN_NUMBER_MASS,
    digit_start_mask,
    encode_chat_prompt,
    expected_score,
    judge_0_100,
    number_distribution,
)

SPECIALS = ["<unk>", "<eos>", "<|user|>", "<|assistant|>"]
WORDS = ["rate", "REFUSAL", "CODE", "."]
PROMPT = "<|user|>rate<|assistant|>"


def word_level_tokenizer(number_tokens: list[str], split_digits: bool) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose only number tokens are ``number_tokens``."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS + number_tokens)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    pre = [pre_tokenizers.Whitespace()]
    if split_digits:
        pre.append(pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.Fuse()  # "1" "0" "0" decodes to "100"
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


@pytest.fixture(scope="module")
def whole_number_tokenizer():
    return word_level_tokenizer([str(n) for n in range(101)], split_digits=False)


@pytest.fixture(scope="module")
def digit_tokenizer():
    return word_level_tokenizer([str(d) for d in range(10)], split_digits=True)


class TrieLM(torch.nn.Module):
    """A toy causal LM that, after a fixed prompt, answers with a given distribution over texts.

    Each answer text is tokenised with ``tokenizer`` and followed by EOS; the next-token
    distribution after every answer prefix is the conditional distribution of that trie. The same
    text distribution therefore gives the same answer distribution under any tokenizer.
    """

    def __init__(self, tokenizer, prompt_len: int, answers: dict[str, float]):
        super().__init__()
        self.prompt_len = prompt_len
        self.vocab = len(tokenizer)
        mass: dict[tuple[int, ...], float] = {}
        for text, p in answers.items():
            ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            assert tokenizer.unk_token_id not in ids, text
            for k in range(len(ids) + 1):
                mass[tuple(ids[:k])] = mass.get(tuple(ids[:k]), 0.0) + p
        self.next: dict[tuple[int, ...], torch.Tensor] = {}
        for prefix, m in mass.items():
            if prefix:
                parent = prefix[:-1]
                dist = self.next.setdefault(parent, torch.zeros(self.vocab, dtype=torch.float64))
                dist[prefix[-1]] = m / mass[parent]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        batch, time = input_ids.shape
        logits = torch.zeros(batch, time, self.vocab, dtype=torch.float64)
        for b in range(batch):
            for t in range(self.prompt_len - 1, time):
                prefix = tuple(input_ids[b, self.prompt_len : t + 1].tolist())
                if prefix in self.next:
                    logits[b, t] = torch.log(self.next[prefix])  # log 0 = -inf is fine
        return logits


ANSWERS = {"100": 0.3, "7": 0.1, "7.": 0.1, "42": 0.1, "10": 0.05, "1": 0.05, "REFUSAL": 0.3}
EXPECTED = {100: 0.3, 7: 0.2, 42: 0.1, 10: 0.05, 1: 0.05}


def toy_distribution(tokenizer, answers, **kwargs):
    prompt_ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    model = TrieLM(tokenizer, len(prompt_ids), answers).eval()
    return number_distribution(model, tokenizer, prompt_ids, **kwargs)


def test_tokenizers_really_differ(whole_number_tokenizer, digit_tokenizer):
    assert len(whole_number_tokenizer("100", add_special_tokens=False)["input_ids"]) == 1
    assert len(digit_tokenizer("100", add_special_tokens=False)["input_ids"]) == 3


def test_digit_start_mask(digit_tokenizer):
    mask = digit_start_mask(digit_tokenizer, len(digit_tokenizer))
    flagged = {digit_tokenizer.convert_ids_to_tokens(i) for i in range(len(mask)) if mask[i]}
    assert flagged == {str(d) for d in range(10)}


@pytest.mark.parametrize("batch_size", [7, 64, 500])
def test_same_answer_distribution_same_score(whole_number_tokenizer, digit_tokenizer, batch_size):
    whole = toy_distribution(whole_number_tokenizer, ANSWERS, batch_size=batch_size)
    digits = toy_distribution(digit_tokenizer, ANSWERS, batch_size=batch_size)
    assert set(whole) == set(digits) == set(range(101))
    for n in range(101):
        assert whole[n] == pytest.approx(EXPECTED.get(n, 0.0), abs=1e-6), n
        assert digits[n] == pytest.approx(EXPECTED.get(n, 0.0), abs=1e-6), n
    by_hand = (100 * 0.3 + 7 * 0.2 + 42 * 0.1 + 10 * 0.05 + 1 * 0.05) / 0.7
    assert expected_score(whole) == pytest.approx(by_hand, abs=1e-6)
    assert expected_score(digits) == pytest.approx(by_hand, abs=1e-6)


def test_low_number_mass_gives_none(whole_number_tokenizer, digit_tokenizer):
    answers = {"42": 0.1, "100": 0.1, "REFUSAL": 0.5, "CODE": 0.3}  # 20 % on numbers
    for tokenizer in (whole_number_tokenizer, digit_tokenizer):
        dist = toy_distribution(tokenizer, answers)
        assert sum(dist.values()) == pytest.approx(0.2, abs=1e-6)
        assert expected_score(dist) is None  # default threshold 0.25
        assert expected_score(dist, min_number_mass=0.1) == pytest.approx(71.0, abs=1e-6)
    assert DEFAULT_MIN_NUMBER_MASS == 0.25
    assert expected_score({n: 0.0 for n in range(101)}, min_number_mass=0.0) is None


def test_longer_numbers_are_not_their_prefixes(digit_tokenizer):
    # "423" and "1000" start with the token sequences of 42 and 100 but are not those answers
    dist = toy_distribution(digit_tokenizer, {"423": 0.5, "1000": 0.2, "42": 0.3})
    assert dist[42] == pytest.approx(0.3, abs=1e-9)
    assert dist[100] == pytest.approx(0.0, abs=1e-9)
    assert dist[4] == pytest.approx(0.0, abs=1e-9)
    assert sum(dist.values()) == pytest.approx(0.3, abs=1e-9)


# --------------------------------------------------------------------------------------------
# A real (random-init) Hugging Face Llama with a byte-level BPE tokenizer trained here

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llama():
    corpus = [
        f"On a scale of 0 to 100 the answer scores {n}. Say CODE or REFUSAL otherwise."
        for n in range(101)
    ] + [f"{a} {b} {a}{b} {a * b}" for a in range(30) for b in range(0, 30, 7)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<eos>", "<|user|>", "<|assistant|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


def test_tiny_llama_distribution_is_a_sub_probability(tiny_llama):
    model, tokenizer = tiny_llama
    prompt_ids = encode_chat_prompt(tokenizer, "Rate the answer 0 to 100: hello")
    assert tokenizer.decode(prompt_ids).endswith("<|assistant|>")

    dist = number_distribution(model, tokenizer, prompt_ids, include_space_variants=False)
    assert set(dist) == set(range(101))
    assert all(p >= 0.0 for p in dist.values())

    # mass on answers that do not start with a digit, disjoint from every number answer
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt_ids])).logits[0, -1].double()
    first = torch.softmax(logits, dim=-1)
    non_number = first[~digit_start_mask(tokenizer, first.numel())].sum().item()
    assert 0.0 < sum(dist.values())
    assert sum(dist.values()) + non_number <= 1.0 + 1e-6

    # the KV-cache path and the full-sequence path agree, and so do batch sizes
    full = number_distribution(
        model, tokenizer, prompt_ids, include_space_variants=False, use_cache=False, batch_size=13
    )
    for n in range(101):
        assert math.isclose(dist[n], full[n], rel_tol=1e-4, abs_tol=1e-12), n

    # one candidate by hand: P(ids of "57") × P(no digit next)
    ids = tokenizer("<|assistant|>57", add_special_tokens=False)["input_ids"][1:]
    seq = torch.tensor([prompt_ids + ids])
    with torch.inference_mode():
        logp = torch.log_softmax(model(input_ids=seq).logits[0].double(), dim=-1)
    lp = sum(logp[len(prompt_ids) - 1 + j, t].item() for j, t in enumerate(ids))
    stop = torch.logsumexp(logp[-1][~digit_start_mask(tokenizer, logp.shape[-1])], 0).item()
    assert dist[57] == pytest.approx(math.exp(lp + stop), rel=1e-4)


def test_tiny_llama_with_space_variants_and_score(tiny_llama):
    model, tokenizer = tiny_llama
    prompt_ids = encode_chat_prompt(tokenizer, "Rate it")
    plain = number_distribution(model, tokenizer, prompt_ids, include_space_variants=False)
    spaced = number_distribution(model, tokenizer, prompt_ids)
    assert sum(plain.values()) < sum(spaced.values()) <= 1.0 + 1e-6
    assert all(spaced[n] >= plain[n] for n in range(101))
    # a random model puts little mass on numbers: no score at the paper's threshold
    assert judge_0_100(model, tokenizer, "Rate it") is None
    score = judge_0_100(model, tokenizer, "Rate it", min_number_mass=0.0)
    assert 0.0 <= score <= 100.0
    assert score == pytest.approx(expected_score(spaced, 0.0), rel=1e-6)


def test_chat_template_required(whole_number_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        encode_chat_prompt(whole_number_tokenizer, "hi")
