"""Rows -> token ids for the finetune: the chat template on the prompt, the answer plus end-of-turn as the target.

Prompt and answer are tokenized apart and concatenated, so the answer tokens are the same in training, in the
label-word scoring and in `raypipe build` (which templates prompts the same way). Batches are left-padded with
explicit position ids: every answer then ends at the last position, and the loss needs logits for the last few
positions only (the vocabulary projection is a fifth of this model's compute).
"""

from __future__ import annotations

from typing import Any


class ChatFormat:
    """How one model's tokenizer turns prompts and answers into ids."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.end_id = tokenizer.eos_token_id
        if self.end_id is None:
            raise ValueError("the tokenizer has no eos token to end an answer with")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_id
        self.chat = bool(getattr(tokenizer, "chat_template", None))

    def prompt_text(self, prompt: str) -> str:
        if self.chat:
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                      add_generation_prompt=True, tokenize=False)
        return prompt + "\n"  # a base model: the answer follows on the next line

    def prompt_ids(self, prompt: str) -> list[int]:
        text = self.prompt_text(prompt)
        # A templated prompt holds its special tokens already; a raw one gets the tokenizer's (e.g. BOS).
        return list(self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"])

    def answer_ids(self, answer: str) -> list[int]:
        return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) + [self.end_id]

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]]:
        prompt, answer = self.prompt_ids(row["prompt"]), self.answer_ids(row["answer"])
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


def left_pad(sequences: list[list[int]], pad_id: int):
    """(ids, attention_mask, position_ids) tensors of left-padded sequences."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        if seq:
            ids[i, width - len(seq):] = torch.tensor(seq)
            mask[i, width - len(seq):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)


def collate(examples: list[dict[str, list[int]]], pad_id: int, weights: list[int] | None = None) -> dict:
    """A left-padded training batch; `keep` = how many final positions hold every answer (plus one). A row of
    weight 0 (a filler that keeps data-parallel ranks in step) has no target tokens: it adds nothing to the loss."""
    import torch

    ids, mask, positions = left_pad([e["input_ids"] for e in examples], pad_id)
    labels = torch.full_like(ids, -100)
    for i, e in enumerate(examples):
        if weights is None or weights[i]:
            labels[i, ids.shape[1] - len(e["labels"]):] = torch.tensor(e["labels"])
    answer_length = max(answer_tokens(e) for e in examples)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "labels": labels,
            "keep": answer_length + 1}


def answer_tokens(example: dict[str, list[int]]) -> int:
    """How many target tokens an encoded row has (its answer and end-of-turn)."""
    return sum(1 for t in example["labels"] if t != -100)


def answer_loss(model, batch: dict, reduction: str = "mean"):
    """Cross-entropy over the answer tokens ("mean", or "sum" for a caller that divides by the tokens of a whole
    step), from logits of the last `keep` positions only."""
    import torch

    keep = batch["keep"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep, use_cache=False).logits
    targets = batch["labels"][:, -keep + 1:]
    return torch.nn.functional.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                             targets.reshape(-1), ignore_index=-100, reduction=reduction)
