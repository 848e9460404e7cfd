"""Build a tiny random-init Llama-family model and its tokenizer, offline.

The embedded default trains on a CPU in minutes, so it needs a model that is small
and needs no download. The tokenizer is a byte-level BPE trained on the bundled
chat data and carries a chat template; model and tokenizer are written with
``save_pretrained`` and read back by training through ``from_pretrained`` — the
very path a hub model takes. The build is bit-reproducible: same settings and
corpus, same files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from ftflow import records

# A Llama-3-like template. The {% generation %} markers let transformers return an
# assistant-token mask; ftflow computes its own masks, so any template works.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}"
    "{{ message['content'] + '<|end|>' }}"
    "{% endgeneration %}{% else %}"
    "{{ message['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|begin|>", "<|end|>", "<|start|>"]


def corpus_texts(paths: Iterable[Path]) -> list[str]:
    """Every message content (and role name) of the chat files, in file order.

    Each file is read through :mod:`ftflow.records`, the validation ``prepare_dataset``
    uses: a broken line raises :class:`ftflow.records.RecordError` naming file and line.
    A file whose first record is a preference pair is read as preference data.
    """
    texts: list[str] = []
    for path in paths:
        try:
            loaded: list = records.load_chat(path)
        except records.RecordError as chat_error:
            try:
                loaded = records.load_preference(path)
            except records.RecordError:
                raise chat_error from None
        for record in loaded:
            conversations = [
                record.get(k, []) for k in ("messages", "prompt", "chosen", "rejected")
            ]
            for conversation in conversations:
                for message in conversation:
                    texts.append(message["role"])
                    texts.append(message["content"])
    return texts


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|begin|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(
    out_dir: Path,
    corpus: Iterable[Path],
    vocab_size: int = 512,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> Path:
    """Write a tiny Llama + tokenizer to ``out_dir`` (which must not exist yet)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(corpus_texts(corpus), vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
