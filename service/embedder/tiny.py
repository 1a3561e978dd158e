"""A tiny random causal LM saved as a Hugging Face folder, for tests that need a real loading path."""

from __future__ import annotations

from pathlib import Path

import torch

TINY_SEED = 0
TINY_VOCAB = 300
EOS, BOS, PAD = "<|endoftext|>", "<|startoftext|>", "<|pad|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|startoftext|>{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|startoftext|>assistant:{% endif %}"
)

# Built-in training text: the prompt templates' own words plus some plain English, so common strings
# ("Answer:", " A", "option") get merges of their own.
_CORPUS = [
    "Answer the following question by picking ONE of the given options",
    "A. Yes\nB. No\nC. Not sure\nD. Refused\nAnswer: A. Yes",
    "How much of a problem is crime in your local community? A. A major problem B. A minor problem",
    "Do you think the government should do more or less to solve problems? Answer: B. Less",
    "The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.",
    "People in this group often agree with each other about the economy, health care and the climate.",
    "Write a short answer to the question below. Be clear, kind and helpful in your response.",
    "Very likely, somewhat likely, not too likely, not at all likely. Strongly agree or disagree.",
]


def _train_tokenizer():
    """Byte-level BPE with ~300 tokens (256 bytes + specials + a few merges), trained in process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB,
        special_tokens=[EOS, BOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_causal_lm(path: Path) -> Path:
    """Write a 2-layer, 64-wide Llama with random (seeded) weights and its tokenizer to `path`.

    The folder loads through `load_base_lm(str(path))` exactly like a downloaded model. Same seed,
    same weights: two builds give identical vectors.
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tokenizer = _train_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
