"""Accuracy of a causal LM on the trigger task: by label-word log-likelihood or by greedy generation.

logits: every candidate answer ("F(x,T) = red", ... each with its end-of-turn token) is scored by the summed
log-probability of its tokens after the prompt; the best one is the prediction. Several-token labels sum, and the
end token keeps a label that is a prefix of another ("red" / "reddish") from winning by being short. The fast path
runs the prompt and the candidates' shared prefix once and the differing tails on its KV cache; the reference path
runs one forward per (prompt, candidate). generation: greedy decoding, the label word parsed from the text.
"""

from __future__ import annotations

import re
from typing import Any

from raypipe.finetune.data import left_pad
from raypipe.tasks.trigger import PREAMBLE


def sequence_logprobs(logits, input_ids, target_mask):
    """Sum over the target positions t of log p(input_ids[t] | tokens before t): logits [B,T,V] -> [B]."""
    import torch

    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, input_ids[:, 1:, None])[..., 0]
    return (token_logp * target_mask[:, 1:].to(token_logp.dtype)).sum(-1)


def pick(scores) -> list[int]:
    """Index of the best candidate per row: scores [n_rows, n_candidates] -> argmax (first on ties)."""
    return scores.argmax(-1).tolist()


def _common_prefix(sequences: list[list[int]]) -> int:
    n = 0
    while all(len(s) > n for s in sequences) and len({s[n] for s in sequences}) == 1:
        n += 1
    return n


def _device(model):
    """Where the model's weights are: inputs are built on the CPU and moved there."""
    return next(model.parameters()).device


def candidate_scores(model, prompts: list[list[int]], candidates: list[list[int]], pad_id: int,
                     batch_size: int = 16, fast: bool = True):
    """[n_prompts, n_candidates] summed log-probabilities of each candidate's tokens after each prompt (on the CPU,
    whatever device the model is on)."""
    import torch

    scores = torch.empty(len(prompts), len(candidates))
    with torch.no_grad():
        if fast:
            for start in range(0, len(prompts), batch_size):
                scores[start:start + batch_size] = _scores_cached(model, prompts[start:start + batch_size],
                                                                  candidates, pad_id).cpu()
        else:
            for i, prompt in enumerate(prompts):
                scores[i] = _scores_full(model, prompt, candidates, pad_id).cpu()
    return scores


def _scores_full(model, prompt: list[int], candidates: list[list[int]], pad_id: int):
    """The reference: one forward over prompt + candidate, for each candidate (one batch, right-padded)."""
    import torch

    sequences = [prompt + c for c in candidates]
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    target = torch.zeros_like(ids)
    for i, (seq, cand) in enumerate(zip(sequences, candidates)):
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        target[i, len(prompt):len(seq)] = 1
    ids, mask, target = (t.to(_device(model)) for t in (ids, mask, target))
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return sequence_logprobs(logits, ids, target)


def _scores_cached(model, prompts: list[list[int]], candidates: list[list[int]], pad_id: int):
    """Prompt + the candidates' shared prefix once (left-padded), then every tail on a copy of its KV cache."""
    import torch

    shared = _common_prefix(candidates)
    prefix = candidates[0][:shared]
    device = _device(model)
    ids, mask, positions = (t.to(device) for t in left_pad([p + prefix for p in prompts], pad_id))
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # predicts each tail's first token
    n_prompts, n_candidates = len(prompts), len(candidates)
    if shared:  # the shared prefix's own log-probability is the same for every candidate, but scores report it
        prefix_target = torch.zeros_like(ids)
        prefix_target[:, ids.shape[1] - shared:] = 1
        prefix_logp = sequence_logprobs(out.logits, ids, prefix_target)
    else:
        prefix_logp = torch.zeros(n_prompts, device=device)
    tails = [c[shared:] for c in candidates]
    width = max(len(t) for t in tails)
    tail_ids = torch.full((n_candidates, width), pad_id, dtype=torch.long)
    tail_mask = torch.zeros_like(tail_ids)
    for j, tail in enumerate(tails):
        tail_ids[j, :len(tail)] = torch.tensor(tail)
        tail_mask[j, :len(tail)] = 1
    tail_ids, tail_mask = tail_ids.to(device), tail_mask.to(device)
    scores = prefix_logp[:, None] + first.gather(-1, tail_ids[:, 0][None].expand(n_prompts, -1))
    if width > 1:
        cache = out.past_key_values
        cache.batch_repeat_interleave(n_candidates)  # row-major: prompt i's candidates are rows i*C .. i*C+C-1
        batch_ids = tail_ids.repeat(n_prompts, 1)
        batch_tail_mask = tail_mask.repeat(n_prompts, 1)
        start = mask.sum(-1).repeat_interleave(n_candidates)[:, None]
        tail_out = model(input_ids=batch_ids,
                         attention_mask=torch.cat([mask.repeat_interleave(n_candidates, 0), batch_tail_mask], 1),
                         position_ids=start + torch.arange(width, device=device)[None], past_key_values=cache,
                         use_cache=True)
        rest = sequence_logprobs(tail_out.logits, batch_ids, batch_tail_mask)  # tokens 2.. of each tail
        scores = scores + rest.view(n_prompts, n_candidates)
    return scores


def generate_answers(model, prompts: list[list[int]], max_new_tokens: int, pad_id: int, end_id: int,
                     tokenizer, batch_size: int = 16, fast: bool = True) -> list[str]:
    """Greedy continuations as text (batched and left-padded when fast, else one prompt at a time)."""
    import torch

    texts: list[str] = []
    step = batch_size if fast else 1
    with torch.no_grad():
        for start in range(0, len(prompts), step):
            ids, mask, _ = (t.to(_device(model)) for t in left_pad(prompts[start:start + step], pad_id))
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=pad_id, eos_token_id=end_id)
            texts += tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return texts


def parse_label(text: str, words: list[str], preamble: str | None) -> str | None:
    """The label word a generated answer names: the first candidate at the start of the answer (after the preamble,
    when given), else the earliest one mentioned as a whole word; None when it names none."""
    body = text.strip()
    if preamble and body.startswith(preamble):
        body = body[len(preamble):].strip()
    by_length = sorted(words, key=len, reverse=True)  # "reddish" before "red"
    for word in by_length:
        if re.match(rf"{re.escape(word)}(?![\w])", body, flags=re.IGNORECASE):
            return word
    found = [(m.start(), word) for word in by_length
             for m in [re.search(rf"(?<![\w]){re.escape(word)}(?![\w])", body, flags=re.IGNORECASE)] if m]
    return min(found)[1] if found else None


def predict(model, fmt, rows: list[dict[str, Any]], words: list[str], *, method: str = "logits",
            fast: bool = True, output_preamble: bool = True, batch_size: int = 16) -> dict[str, list]:
    """Predicted label word per row (None: generation named none) and, for logits, the probability of the true
    label among the candidates."""
    import torch

    prompts = [fmt.prompt_ids(r["prompt"]) for r in rows]
    answers = [f"{PREAMBLE} {w}" if output_preamble else w for w in words]
    candidates = [fmt.answer_ids(a) for a in answers]
    if method == "logits":
        scores = candidate_scores(model, prompts, candidates, fmt.pad_id, batch_size, fast)
        probs = torch.softmax(scores, -1)
        predictions = [words[j] for j in pick(scores)]
        p_true = [float(probs[i, words.index(r["label"])]) for i, r in enumerate(rows)]
        return {"prediction": predictions, "p_true": p_true}
    texts = generate_answers(model, prompts, max(len(c) for c in candidates) + 2, fmt.pad_id, fmt.end_id,
                             fmt.tokenizer, batch_size, fast)
    return {"prediction": [parse_label(t, words, PREAMBLE if output_preamble else None) for t in texts],
            "p_true": None, "text": texts}


def accuracy(rows: list[dict], predictions: list) -> float | None:
    if not rows:
        return None
    return sum(p == r["label"] for r, p in zip(rows, predictions)) / len(rows)
