"""Feature positions: the chat template's post-instruction tokens and marker strings, on real tokenizers."""

import pytest

from raypipe.errors import UserError
from raypipe.positions import detect_eoi_tokens, expand_positions, marker_offset, row_offsets

QWEN3_STYLE = ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n\n</think>\n\n{% endif %}")


def test_eoi_on_the_embedded_template(tokenizer):
    n = detect_eoi_tokens(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True,
                                         tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert n == 6 and tokenizer.decode(ids[-n:]) == "<|im_end|>\n<|im_start|>assistant\n"
    assert expand_positions(["eoi", -1], tokenizer, None) == [-6, -5, -4, -3, -2, -1]
    assert expand_positions(["eoi"], tokenizer, 2) == [-2, -1]  # --eoi-tokens overrides


def test_eoi_on_a_qwen_style_template(tokenizer):
    qwen = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    qwen.chat_template = QWEN3_STYLE
    n = detect_eoi_tokens(qwen)
    text = qwen.apply_chat_template([{"role": "user", "content": "2+2?"}], add_generation_prompt=True, tokenize=False)
    ids = qwen(text, add_special_tokens=False)["input_ids"]
    assert qwen.decode(ids[-n:]) == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert n > detect_eoi_tokens(tokenizer)


def test_eoi_without_a_template_is_a_clear_error(tokenizer):
    bare = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(UserError, match="needs a chat template"):
        detect_eoi_tokens(bare)


def test_marker_offset_points_at_the_markers_last_token(tokenizer):
    text = "Question: think first </think> and answer </think> now"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    offset = marker_offset(tokenizer, text, ids, "</think>")
    assert tokenizer.decode(ids[: len(ids) + offset + 1]).endswith("answer </think>")  # the last occurrence
    assert marker_offset(tokenizer, text, ids, "<absent>") is None
    assert row_offsets([-1, "marker:</think>"], tokenizer, text, ids) == [-1, offset]
    assert row_offsets(["marker:<absent>"], tokenizer, text, ids) is None


def test_answer_positions_count_from_the_end_of_prompt_plus_answer():
    from raypipe.positions import with_answer

    positions = [-2, -1, "answer:-2"]
    ids, offsets = with_answer([1, 2, 3, 4], [7, 8, 9], [-2, -1, -2], positions)
    assert ids == [1, 2, 3, 4, 7, 8, 9]
    assert [ids[o] for o in offsets] == [3, 4, 8]  # prompt tokens stay put; the answer's second-last token
    ids, offsets = with_answer([1, 2, 3], [9], [-1, -3], [-1, "answer:-3"])
    assert [ids[o] for o in offsets] == [3, 3]  # an answer shorter than 3 tokens: clamped to the prompt's end
