"""Labels on the datasets researchers use, in their published formats (issue 24): references in every shape, free-form
and multiple-choice matching, answers after a thinking model's marker, hub configs on local copies in the hub's
layout, prompt templates over columns. The judged outputs per format are in tests/fixtures/public_formats (their
precision and recall: bench/labels.py, held here to the same bar)."""

from __future__ import annotations

import json

import pytest

from raypipe.config import SourceConfig
from raypipe.data import load_splits, parse_eval_split
from raypipe.errors import UserError
from raypipe.labels.matching import chosen_option, is_correct, judge, token_f1
from raypipe.labels.references import Reference, read_reference
from raypipe.sources import split_config
from tests.public_datasets import GSM8K_ROW, MMLU_ROW, SQUAD_ROW, TRIVIAQA_ROW, write_hub_layout

# --- references in every shape --------------------------------------------------------------------------------------


def test_a_gsm8k_solution_is_judged_by_its_value_after_the_four_hashes():
    solution = GSM8K_ROW["answer"]
    assert read_reference(solution).answers == ("72",)
    assert is_correct("The answer is 72.", solution) and is_correct("So she sold \\boxed{72} clips.", solution)
    assert not is_correct("She sold 24 clips in May.", solution)  # 24 is in the solution, not its answer
    assert is_correct("#### 1,000", "#### 1000")


def test_any_element_of_a_list_reference_is_right():
    aliases = TRIVIAQA_ROW["answer"]["aliases"]
    assert is_correct("Answer: Sinclair Lewis", aliases, match="f1")
    assert is_correct("The 1930 laureate was Sinclair Lewis.", aliases, match="f1")
    # SQuAD's F1 at 0.5 takes a half-right name (one of two tokens): the threshold is the knob that refuses it
    assert token_f1("Upton Sinclair", "Sinclair Lewis") == 0.5
    assert judge("Upton Sinclair", "stop", read_reference(aliases), "f1", f1_threshold=0.6)[0] is False
    assert not is_correct("Ernest Hemingway won it.", aliases, match="f1")
    assert is_correct("The answer is 12", [12, "twelve"])


@pytest.mark.parametrize("value, reason", [([], "an empty list"), ({"aliases": ["x"]}, "a record"),
                                           (["Paris", None], "a list holding NoneType"), ("  ", "an empty string"),
                                           (True, "a boolean")])
def test_a_reference_that_cannot_be_read_says_why_and_is_never_judged(value, reason):
    reference = read_reference(value)
    assert not reference.readable and reference.error.startswith(reason)
    assert not is_correct("Paris", value)
    from raypipe.labels.catalog import row_labels

    labels = row_labels([[1, 2]], ["Paris"], ["stop"], reference, loop_n=2, loop_k=3)
    assert labels["correct"] != labels["correct"] and labels["_unreadable"] == 1.0  # NaN and counted, not 0


def test_a_missing_reference_is_no_reference():
    assert read_reference(None) is None and read_reference(float("nan")) is None


# --- multiple choice ------------------------------------------------------------------------------------------------

MMLU = read_reference(MMLU_ROW["answer"], MMLU_ROW["choices"])


def test_a_multiple_choice_reference_is_an_index_letter_number_or_text():
    assert (MMLU.choice, MMLU.answers[0]) == (3, "D")
    options = ["Mars", "Venus", "Jupiter", "Saturn"]
    assert read_reference("C", options).choice == 2  # ARC's answerKey
    assert read_reference("3", options).choice == 2  # ARC's numeric answerKey, 1-based
    assert read_reference("Venus", options).choice == 1
    assert read_reference(4, options).error == "option 4 is past the 4 options"
    assert read_reference("E", options).error.startswith("option 'E' is past")
    assert read_reference(1, "Mars, Venus").error.startswith("the options are str")


@pytest.mark.parametrize("text, right", [
    ("D", True), ("(D)", True), ("D) The second and third pharyngeal arches", True), ("The answer is D.", True),
    ("**D**", True), ("The second and third pharyngeal arches", True), ("Answer: (D)", True),
    ("D — the second and third arches.", True), ("B. The second and third pharyngeal arches", False),
    ("D) The first pharyngeal arch", False),  # a letter with another option's text picks neither
    ("The hyoid comes from the second and third arches, so the answer is D.", True),
    ("B", False), ("The answer is B.", False), ("The first pharyngeal arch", False),
    ("D is wrong; the answer is A.", False), ("I am not sure.", False),
])
def test_a_sample_picks_an_option_by_letter_or_by_its_text(text, right):
    assert judge(text, "stop", MMLU)[0] is right


def test_a_lower_case_article_is_not_an_option():
    assert chosen_option("a bone of the neck", "stop", MMLU.options) is None


# --- free-form answers ----------------------------------------------------------------------------------------------

def test_free_form_answers_match_by_squad_token_f1_over_their_spans():
    truth = SQUAD_ROW["answers"]["text"]
    assert token_f1("a golden statue of the Virgin Mary", "golden statue of Virgin Mary") == 1.0  # articles go
    for text in ("A golden statue of the Virgin Mary.", "The Virgin Mary, in a golden statue",
                 "Atop the dome is a golden statue of the Virgin Mary."):
        assert judge(text, "stop", read_reference(truth), "f1")[0], text
    for text in ("A copper statue of Christ.", "The gold dome.", "Nothing sits there."):
        assert not judge(text, "stop", read_reference(truth), "f1")[0], text
    strict = judge("Paris, Texas", "stop", read_reference(["Paris"]), "f1", f1_threshold=0.9)
    assert strict == (False, True)  # the threshold is a knob: F1 0.67 passes 0.5, not 0.9


def test_auto_chooses_f1_for_prose_references_and_math_for_numbers(tmp_path):
    from raypipe.config import BuildConfig, get_preset
    from raypipe.plan import answer_match

    data = tmp_path / "squad.jsonl"
    data.write_text("".join(json.dumps({**SQUAD_ROW, "id": str(i)}) + "\n" for i in range(4)))
    config = BuildConfig(out_dir="o", model=get_preset("smollm2_135m"), source=SourceConfig(
        train_dataset=str(data), prompt_field="question", answer_field="answers.text"))
    from raypipe.data import open_sources

    assert answer_match(config, open_sources(config.source)[0]) == "f1"
    gsm8k = tmp_path / "gsm8k.jsonl"
    gsm8k.write_text(json.dumps(GSM8K_ROW) + "\n" + json.dumps(GSM8K_ROW) + "\n")
    config.source = SourceConfig(train_dataset=str(gsm8k), prompt_field="question")
    assert answer_match(config, open_sources(config.source)[0]) == "math"  # the value after ####, not the prose


# --- thinking models ------------------------------------------------------------------------------------------------

def test_a_thinking_models_answer_is_read_after_its_marker():
    reference = read_reference(GSM8K_ROW["answer"])
    thinking = "<think>\nApril 48, May 24. Wait, the answer is 24? No: 48 + 24.\n</think>\n\nThe answer is 72."
    assert judge(thinking, "stop", reference, answer_after="</think>") == (True, True)
    assert judge("<think>so the answer is 72.</think>\nI could not decide.", "stop", reference,
                 answer_after="</think>") == (False, False)  # 72 only inside the thinking
    assert judge("<think>the answer is 72", "length", reference, answer_after="</think>") == (False, False)
    assert judge("The answer is 72.", "stop", reference, answer_after="</think>") == (True, True)  # thinking off


def test_the_presets_that_think_read_answers_after_their_marker():
    from raypipe.config import PRESETS

    assert {name for name, preset in PRESETS.items() if preset.answer_after == "</think>"} == {
        "qwq_32b", "openthinker3_7b", "openthinker3_1p5b"}
    assert PRESETS["smollm2_135m"].answer_after is None


def test_success_rate_and_answer_clusters_use_the_same_matcher():
    from raypipe.labels.catalog import row_labels
    from raypipe.labels.semantic import make_clusterer

    texts = ["Paris.", "It is Paris", "The answer is Lyon.", "D"]
    cluster = make_clusterer("answer", match="f1")
    labels = row_labels([[1]] * 4, texts, ["stop"] * 4, read_reference(["Paris"]), loop_n=2, loop_k=3,
                        cluster=cluster, match="f1")
    assert labels["success_rate"] == 0.5 and labels["correct"] == 1.0
    assert cluster(texts, ["stop"] * 4) == [0, 0, 1, 2]  # Paris twice, Lyon, D
    choice = make_clusterer("answer")
    assert choice(["D", "(D)", "The second and third pharyngeal arches", "B"], ["stop"] * 4, MMLU) == [0, 0, 0, 1]


# --- sources: configs, dotted fields, templates ---------------------------------------------------------------------

def test_a_config_follows_a_hash_on_every_source():
    assert split_config("openai/gsm8k#main") == ("openai/gsm8k", "main")
    assert split_config("mandarjoshi/trivia_qa#rc.nocontext") == ("mandarjoshi/trivia_qa", "rc.nocontext")
    assert split_config("data/x.jsonl") == ("data/x.jsonl", None)
    assert parse_eval_split("hard=openai/gsm8k#socratic:test").spec == "openai/gsm8k#socratic"
    assert parse_eval_split("hard=openai/gsm8k#socratic:test").split == "test"
    with pytest.raises(UserError, match="follows '#'"):
        split_config("openai/gsm8k#")


def test_a_local_copy_in_the_hubs_multi_config_layout_is_read_per_config(tmp_path):
    socratic = {**GSM8K_ROW, "answer": "How many in May? ** 48/2 = <<48/2=24>>24\n#### 72"}
    folder = write_hub_layout(tmp_path / "gsm8k", {
        "main": {"train": [GSM8K_ROW] * 3, "test": [GSM8K_ROW] * 2},
        "socratic": {"train": [socratic] * 4, "test": [socratic]}})
    rows, _ = load_splits(SourceConfig(train_dataset=f"{folder}#main", test_dataset=f"{folder}#socratic",
                                       prompt_field="question", eval_splits=[f"more={folder}#main:test"]))
    assert [len(rows[s]) for s in ("train", "test", "more")] == [3, 1, 2]
    assert rows["test"][0]["answer"].startswith("How many in May?")  # the solution stays whole in the sidecar
    assert all(Reference.from_json(r["reference"]).answers == ("72",) for split in rows.values() for r in split)
    with pytest.raises(UserError, match=r"has configs main, socratic; name one: .*#main"):
        load_splits(SourceConfig(train_dataset=str(folder), prompt_field="question"))
    with pytest.raises(UserError, match=r"has no config 'mian'; its configs are: main, socratic"):
        load_splits(SourceConfig(train_dataset=f"{folder}#mian", prompt_field="question"))
    data = tmp_path / "plain.jsonl"
    data.write_text(json.dumps(GSM8K_ROW) + "\n")
    with pytest.raises(UserError, match="has no configs"):
        load_splits(SourceConfig(train_dataset=f"{data}#main", prompt_field="question"))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def test_nested_answers_are_named_by_dotted_path_and_a_record_is_refused(tmp_path):
    data = _jsonl(tmp_path / "tqa.jsonl", [TRIVIAQA_ROW, {**TRIVIAQA_ROW, "question_id": "tc_2"}])
    rows, _ = load_splits(SourceConfig(train_dataset=data, prompt_field="question", answer_field="answer.aliases",
                                       test_fraction=0.5))
    reference = Reference.from_json(rows["train"][0]["reference"])
    assert reference.answers == tuple(TRIVIAQA_ROW["answer"]["aliases"])
    assert json.loads(rows["train"][0]["answer"]) == TRIVIAQA_ROW["answer"]["aliases"]
    with pytest.raises(UserError, match=r"answer field 'answer' of .* is a record; name the field that holds the "
                                        r"answer, e\.g\. answer\.aliases"):
        load_splits(SourceConfig(train_dataset=data, prompt_field="question"))
    with pytest.raises(UserError, match=r"has no field 'alias'; its fields are: aliases, normalized_aliases"):
        load_splits(SourceConfig(train_dataset=data, prompt_field="question", answer_field="answer.alias"))
    squad = _jsonl(tmp_path / "squad.jsonl", [SQUAD_ROW, {**SQUAD_ROW, "id": "2"}])
    rows, _ = load_splits(SourceConfig(train_dataset=squad, prompt_field="question", answer_field="answers.text",
                                       test_fraction=0.5))
    assert Reference.from_json(rows["test"][0]["reference"]).answers == ("a golden statue of the Virgin Mary",)


def test_a_row_whose_reference_cannot_be_read_keeps_its_prompt_and_says_why(tmp_path):
    data = _jsonl(tmp_path / "nq.jsonl", [{"question": "who sang it", "answer": ["Queen"]},
                                          {"question": "who wrote it", "answer": []}])
    rows, skipped = load_splits(SourceConfig(train_dataset=data, prompt_field="question", test_fraction=0.5))
    every = rows["train"] + rows["test"]
    assert len(every) == 2 and not skipped["train"] and not skipped["test"]
    errors = [Reference.from_json(r["reference"]).error for r in every]
    assert sorted(map(str, errors)) == ["None", "an empty list"]


def test_a_prompt_template_renders_columns_and_lettered_options(tmp_path):
    data = _jsonl(tmp_path / "mmlu.jsonl", [MMLU_ROW, {**MMLU_ROW, "question": None}])
    rows, skipped = load_splits(SourceConfig(
        train_dataset=data, prompt_template="{question}\n{choices}\nAnswer with the letter.", options_field="choices",
        test_fraction=0.5))
    prompt = (rows["train"] + rows["test"])[0]["question"]
    assert prompt == ("What is the embryological origin of the hyoid bone?\nA. The first pharyngeal arch\n"
                      "B. The first and second pharyngeal arches\nC. The second pharyngeal arch\n"
                      "D. The second and third pharyngeal arches\nAnswer with the letter.")
    assert sum(s.get("missing_template_value", 0) for s in skipped.values()) == 1
    assert Reference.from_json((rows["train"] + rows["test"])[0]["reference"]).choice == 3
    squad = _jsonl(tmp_path / "squad.jsonl", [SQUAD_ROW, {**SQUAD_ROW, "id": "2"}])
    rows, _ = load_splits(SourceConfig(train_dataset=squad, prompt_template="{context}\n\nQuestion: {question}",
                                       answer_field="answers.text", test_fraction=0.5))
    assert rows["train"][0]["question"].endswith("Question: What sits on top of the Main Building at Notre Dame?")
    with pytest.raises(UserError, match=r"--prompt-template field 'questoin' is not in"):
        load_splits(SourceConfig(train_dataset=squad, prompt_template="{questoin}", answer_field="answers.text"))
    with pytest.raises(UserError, match="--prompt-template fields are column names"):
        load_splits(SourceConfig(train_dataset=squad, prompt_template="{question!r}", answer_field="answers.text"))


def test_chat_template_switches_are_keyword_arguments():
    config = SourceConfig(chat_template_args=["enable_thinking=false", "reasoning_effort=low"])
    assert config.template_args() == {"enable_thinking": False, "reasoning_effort": "low"}
    with pytest.raises(UserError, match="--chat-template-arg takes KEY=VALUE"):
        SourceConfig(chat_template_args=["enable_thinking"])


# --- the judged outputs of each public format -----------------------------------------------------------------------

def test_each_public_format_is_labelled_as_a_careful_reader_labels_it():
    """bench/labels.py's table, held to its bar: precision >= 0.98 and recall >= 0.95 on every format."""
    from bench.labels import FORMATS, score_format

    for name in FORMATS:
        result = score_format(name)
        assert result["outputs"] >= 30, result
        assert result["precision"] >= 0.98 and result["recall"] >= 0.95, result


def test_the_held_out_formats_hold_the_level_measured_when_they_were_first_read():
    """tests/fixtures/public_formats_heldout was written after the matcher, by someone who had not read it; first
    read: precision 0.92-1.00, recall 0.80-1.00 per format (docs/datasets.md). A regression guard at that level:
    free-form matching on NQ and TriviaQA is below the development set's bar there, and the docs say so."""
    from bench.labels import FORMATS, HELD_OUT, score_format

    names = [name for name in FORMATS if (HELD_OUT / f"{name}.jsonl").is_file()]
    assert len(names) == 7
    for name in names:
        result = score_format(name, "after", HELD_OUT)
        assert result["precision"] >= 0.9 and result["recall"] >= 0.8, result


def test_the_embedded_models_own_outputs_on_the_same_rows_are_judged_as_a_reader_judges_them():
    """62 greedy SmolLM2-135M outputs, one per fixture row, judged by reading: no output the labeller calls right is
    wrong; one right answer is missed (a long SQuAD paragraph that names the span mid-text)."""
    from bench.labels import EMBEDDED, FORMATS, score_format

    results = [score_format(name, "after", EMBEDDED) for name in FORMATS]
    assert sum(r["outputs"] for r in results) == 62 and sum(r["correct"] for r in results) == 7
    assert sum(r["fp"] for r in results) == 0 and sum(r["fn"] for r in results) <= 1, results
