"""Generation with the base LLM: n sampled responses per prompt, and option-letter probabilities."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch

from service.embedder.loading import BaseLM
from service.embedder.prompts import LETTERS


def chat_text(tokenizer, prompt: str, use_chat_template: bool | None = None) -> str:
    """The text a chat model reads for a user `prompt`: through the tokenizer's chat template when it has one (and it
    is wanted), else the prompt itself. The API applies it (`service.serving.generate`) so that any completions
    engine, ours or a standard one, is sent plain text."""
    templated = bool(tokenizer.chat_template) if use_chat_template is None else use_chat_template
    if not templated:
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def text_ids(lm: BaseLM, text: str) -> torch.Tensor:
    """Token ids [1, T] of a plain-text prompt as a completions engine reads it: the tokenizer's special tokens are
    added unless the text already begins with its BOS (a chat template holds them; adding them again would double
    the BOS)."""
    tok = lm.tokenizer
    has_bos = bool(tok.bos_token) and text.startswith(tok.bos_token)
    return tok(text, add_special_tokens=not has_bos, return_tensors="pt")["input_ids"].to(lm.device)


def chat_prompt_ids(lm: BaseLM, prompt: str, use_chat_template: bool | None) -> torch.Tensor:
    """Prompt token ids [1, T] of a user prompt: `text_ids` of its `chat_text`."""
    return text_ids(lm, chat_text(lm.tokenizer, prompt, use_chat_template))


RESPONSE_POOLED_TEMPLATE_VERSION = "gpo-resp-gen-v1"
"""Response vectors pooled in the sampling pass: the last hidden states of the prompt as the model read it
(chat template included) and of the response tokens it read while sampling (those before the first end
token; the final sampled token is never read and is left out), pooled like the worker's embeddings. Equal,
up to float rounding, to `Embedder`-style pooling of one forward over those token ids (tested)."""


def end_token_ids(lm: BaseLM) -> set[int]:
    cfg = getattr(lm.model, "generation_config", None)
    eos = getattr(cfg, "eos_token_id", None) if cfg is not None else None
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
    return {int(i) for i in ids}


def generate_batch(
    lm: BaseLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    gen_kwargs: dict[str, object],
    pooling: str | None,
) -> tuple[list[str], list[list[int]], np.ndarray | None]:
    """One `generate` call over left-padded prompts [B, T]: per row the response text, its token ids (up to the
    first end token) and, when `pooling` is set, the row's vector pooled in the same pass."""
    from service.embedder.pooling import pool

    tok = lm.tokenizer
    T = input_ids.shape[1]
    out = lm.model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        output_hidden_states=pooling is not None,
        return_dict_in_generate=True,
        **gen_kwargs,
    )
    new = out.sequences[:, T:]  # [B, L]
    B, L = new.shape
    ends = end_token_ids(lm)
    is_end = torch.zeros_like(new, dtype=torch.bool)
    for e in ends:
        is_end |= new == e
    first_end = torch.where(is_end.any(dim=1), is_end.to(torch.long).argmax(dim=1), torch.full((B,), L))
    ids = [new[b, : int(first_end[b])].tolist() for b in range(B)]
    texts = [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    if pooling is None:
        return texts, ids, None
    steps = out.hidden_states  # per step, per layer: step 0 [B', T, H] (the prompt), then [B, 1, H]
    prompt_h = steps[0][-1]
    if prompt_h.shape[0] != B:  # the prompt pass ran once per prompt row before expansion
        prompt_h = prompt_h.repeat_interleave(B // prompt_h.shape[0], dim=0)
    hidden = torch.cat([prompt_h, *(steps[i][-1] for i in range(1, len(steps)))], dim=1)  # [B, T + L - 1, H]
    n_read = hidden.shape[1] - T  # response tokens read by the model: new[:, :n_read]
    read_ok = torch.arange(n_read, device=new.device)[None, :] < first_end[:, None].to(new.device)
    prompt_mask = attention_mask.to(torch.long)
    if prompt_mask.shape[0] != B:  # num_return_sequences: one prompt row for n samples
        prompt_mask = prompt_mask.repeat_interleave(B // prompt_mask.shape[0], dim=0)
    mask = torch.cat([prompt_mask.to(new.device), read_ok.to(torch.long)], dim=1)
    vectors = pool(hidden.float(), mask.to(hidden.device), pooling).cpu().numpy().astype(np.float32)
    return texts, ids, vectors


# Below this temperature sampling is greedy decoding: dividing the logits by a tiny temperature overflows
# (1.7e-285 is 0 in float32: the probabilities became NaN and sampling failed), and its limit is greedy anyway.
GREEDY_BELOW = 1e-4


def is_greedy(temperature: float) -> bool:
    return temperature < GREEDY_BELOW


def sample_responses(
    lm: BaseLM,
    prompt: str,
    n: int,
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    seed: int | None = None,
    *,
    top_p: float | None = None,
    use_chat_template: bool | None = None,
    pooling: str | None = None,
) -> list[str] | tuple[list[str], np.ndarray]:
    """n sampled continuations of `prompt` (new text only, special tokens dropped, stripped).

    All n come from one batched `generate` call (num_return_sequences=n). With a seed the result is
    deterministic and the global RNG state is left untouched (fork_rng); temperature < GREEDY_BELOW is greedy
    (one decode, repeated n times). With `pooling`, also each response's vector [n, D] pooled in the
    sampling pass (see RESPONSE_POOLED_TEMPLATE_VERSION): (texts, vectors).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    input_ids = chat_prompt_ids(lm, prompt, use_chat_template)  # [1, T]
    tok = lm.tokenizer
    greedy = is_greedy(temperature)
    gen_kwargs: dict[str, object] = {"max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id}
    if greedy:  # all n answers are the same: decode once
        gen_kwargs["do_sample"] = False
    else:
        gen_kwargs.update(do_sample=True, temperature=temperature, num_return_sequences=n)
        if top_p is not None:
            gen_kwargs["top_p"] = top_p

    cuda_devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices, enabled=seed is not None), torch.inference_mode():
        if seed is not None:
            torch.manual_seed(seed)
        texts, _, vectors = generate_batch(lm, input_ids, torch.ones_like(input_ids), gen_kwargs, pooling)
    if greedy:
        texts = texts * n
        vectors = None if vectors is None else np.repeat(vectors, n, axis=0)
    return texts if pooling is None else (texts, vectors)


def sample_responses_many(
    lm: BaseLM,
    prompts: Sequence[str],
    ns: Sequence[int],
    max_new_tokens: int = 128,
    temperature: float = 0.7,
    *,
    top_p: float | None = None,
    use_chat_template: bool | None = None,
    pooling: str | None = None,
) -> list[list[str]] | list[tuple[list[str], np.ndarray]]:
    """Unseeded sampling for several prompts in one batched `generate` call (left padding, with attention
    masks): prompt i gets ns[i] samples. What concurrent unseeded requests with the same sampling settings
    share in the worker; a seeded request runs alone (`sample_responses`), so its result never depends on
    what else was running. With `pooling`, per prompt (texts, vectors) as `sample_responses`."""
    if is_greedy(temperature):
        raise ValueError(f"batched sampling needs temperature >= {GREEDY_BELOW} (greedy requests run alone)")
    if len(prompts) != len(ns) or not prompts or min(ns) < 1:
        raise ValueError("one n >= 1 per prompt, at least one prompt")
    tok = lm.tokenizer
    seqs = [chat_prompt_ids(lm, p, use_chat_template)[0].tolist() for p in prompts]
    rows = [s for s, n in zip(seqs, ns, strict=True) for _ in range(n)]
    T = max(len(s) for s in rows)
    input_ids = torch.full((len(rows), T), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for r, s in enumerate(rows):
        input_ids[r, T - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[r, T - len(s) :] = 1
    gen_kwargs: dict[str, object] = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tok.pad_token_id,
        "do_sample": True,
        "temperature": temperature,
    }
    if top_p is not None:
        gen_kwargs["top_p"] = top_p
    with torch.inference_mode():
        texts, _, vectors = generate_batch(lm, input_ids.to(lm.device), mask.to(lm.device), gen_kwargs, pooling)
    bounds = np.cumsum([0, *ns])
    if pooling is None:
        return [texts[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    assert vectors is not None
    return [(texts[a:b], vectors[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def option_letter_token_ids(lm: BaseLM, n_letters: int) -> list[list[int]]:
    """Per option letter, the single-token ids that spell it as the next token: " A" and "A"."""
    tok = lm.tokenizer
    ids: list[list[int]] = []
    for letter in LETTERS[:n_letters]:
        variants = {tuple(tok.encode(v, add_special_tokens=False)) for v in (f" {letter}", letter)}
        single = sorted({v[0] for v in variants if len(v) == 1})
        if not single:
            raise ValueError(f"the tokenizer has no single token for option letter {letter!r}")
        ids.append(single)
    return ids


def option_letter_probs(
    lm: BaseLM,
    prompts: Sequence[str],
    n_options: Sequence[int],
    *,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """For each prompt (ending with "Answer:"), the next-token probabilities of its option letters,
    renormalised over the first `n_options[i]` letters: the paper's "LM base" baseline.

    A letter's probability is the sum over its spellings (" A", "A"). Batched with left padding and
    explicit position ids, so a prompt's result does not depend on its batch.
    """
    if len(prompts) != len(n_options):
        raise ValueError(f"{len(prompts)} prompts but {len(n_options)} option counts")
    if not prompts:
        return []
    letter_ids = option_letter_token_ids(lm, max(n_options))
    tok = lm.tokenizer
    enc = tok(list(prompts), add_special_tokens=True)["input_ids"]
    # Only the last position's logits are needed: skip the [T, vocab] head output where the model allows.
    accepts_keep = "logits_to_keep" in inspect.signature(lm.model.forward).parameters
    extra = {"logits_to_keep": 1} if accepts_keep else {}
    results: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(enc), batch_size):
            seqs = enc[start : start + batch_size]
            T = max(len(s) for s in seqs)
            input_ids = torch.full((len(seqs), T), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), T), dtype=torch.long)
            for row, s in enumerate(seqs):
                input_ids[row, T - len(s) :] = torch.tensor(s, dtype=torch.long)
                mask[row, T - len(s) :] = 1
            # Left padding shifts real tokens right; position ids count real tokens only.
            position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
            logits = lm.model(
                input_ids=input_ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                position_ids=position_ids.to(lm.device),
                use_cache=False,
                **extra,
            ).logits[:, -1, :]  # [b, V]
            probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()  # [b, V]
            for row, k in enumerate(n_options[start : start + batch_size]):
                p = np.array([probs[row, ids].sum() for ids in letter_ids[:k]], dtype=np.float64)
                total = p.sum()
                results.append(p / total if total > 0 else np.full(k, 1.0 / k))
    return results
