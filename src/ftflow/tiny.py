"""Build a tiny random-init model and its tokenizer, offline: Llama or Nemotron-H.

The embedded default trains on a CPU in minutes, so it needs a model that is small
and needs no download. The tokenizer is a byte-level BPE trained on the bundled
chat data and carries a chat template; model and tokenizer are written with
``save_pretrained`` and read back by training through ``from_pretrained`` — the
very path a hub model takes. The build is bit-reproducible: same settings and
corpus, same files.

``architecture: nemotron_h`` builds a hybrid Nemotron-H (the family of Nemotron-3-Nano):
its layers follow ``pattern`` — ``M`` Mamba-2, ``*`` attention, ``-`` MLP, ``E`` a
mixture of experts — and it trains on a CPU through transformers' pure-torch Mamba path,
without the ``mamba_ssm`` / ``causal_conv1d`` kernels.
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


ARCHITECTURES = ("llama", "nemotron_h")
MAMBA_HEAD_DIM = 16  # Mamba-2 heads × head dim = expand (2) × hidden size


def build(
    out_dir: Path,
    corpus: Iterable[Path],
    vocab_size: int = 512,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int | None = None,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
    architecture: str = "llama",
    pattern: str | None = None,
    tie_word_embeddings: bool | None = None,
) -> Path:
    """Write a tiny model + tokenizer to ``out_dir`` (which must not exist yet).

    ``num_layers`` (default 2) is Llama's; a Nemotron-H has one layer per ``pattern``
    character (default ``M*-E``).
    """
    import torch

    tokenizer = build_tokenizer(corpus_texts(corpus), vocab_size)
    config, model_class = model_config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        architecture=architecture,
        pattern=pattern,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def model_config(
    vocab_size: int = 512,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_layers: int | None = None,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    architecture: str = "llama",
    pattern: str | None = None,
    tie_word_embeddings: bool | None = None,
    **token_ids: int | None,
):
    """The transformers config and model class :func:`build` makes from these settings.

    ``vocab_size`` is the tokenizer's real size when :func:`build` calls it; the plan, which
    trains no tokenizer, passes the setting (an upper bound: BPE stops early on a small
    corpus). ``token_ids``: ``bos_token_id``, ``eos_token_id``, ``pad_token_id``.
    """
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        **token_ids,
    )
    if architecture == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            **common,
            num_hidden_layers=num_layers or 2,
            num_key_value_heads=num_heads,
            tie_word_embeddings=True if tie_word_embeddings is None else tie_word_embeddings,
        )
        return config, LlamaForCausalLM
    if architecture == "nemotron_h":
        from transformers import NemotronHConfig, NemotronHForCausalLM

        config = NemotronHConfig(
            **common,
            **_nemotron_h(hidden_size, num_heads, pattern),
            tie_word_embeddings=bool(tie_word_embeddings),
        )
        return config, NemotronHForCausalLM
    raise ValueError(f"architecture {architecture!r} (allowed: {', '.join(ARCHITECTURES)})")


def _nemotron_h(hidden_size: int, num_heads: int, pattern: str | None) -> dict:
    """Nemotron-H sizes that fit together, from the few the config names."""
    if hidden_size % (MAMBA_HEAD_DIM // 2) or hidden_size % num_heads:
        raise ValueError(
            f"hidden_size {hidden_size}: a tiny Nemotron-H needs a multiple of "
            f"{MAMBA_HEAD_DIM // 2} and of num_heads ({num_heads})"
        )
    mamba_heads = 2 * hidden_size // MAMBA_HEAD_DIM
    return dict(
        hybrid_override_pattern=pattern or "M*-E",
        num_key_value_heads=num_heads,
        head_dim=hidden_size // num_heads,
        mlp_hidden_act="relu2",
        mamba_num_heads=mamba_heads,
        mamba_head_dim=MAMBA_HEAD_DIM,
        expand=2,
        n_groups=2 if mamba_heads % 2 == 0 else 1,
        ssm_state_size=16,
        conv_kernel=4,
        chunk_size=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=hidden_size // 2,
        moe_shared_expert_intermediate_size=hidden_size // 2,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
    )
