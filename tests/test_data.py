import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raypipe.config import SourceConfig
from raypipe.data import load_splits, split_ids
from raypipe.errors import UserError
from raypipe.sources.builtin import arithmetic_problems


def test_split_is_deterministic_disjoint_and_complete():
    train, test = split_ids(100, 0.1, seed=3)
    assert (train, test) == split_ids(100, 0.1, seed=3)
    assert len(test) == 10 and not set(train) & set(test) and sorted(train + test) == list(range(100))
    assert split_ids(100, 0.1, seed=4)[1] != test


def test_builtin_source_is_seeded_and_answered():
    a, b = arithmetic_problems(50, seed=1), arithmetic_problems(50, seed=1)
    assert a == b and a != arithmetic_problems(50, seed=2)
    assert all(row["prompt"].endswith("?") and row["answer"].lstrip("-").isdigit() for row in a)


def test_default_source_is_builtin_with_stable_row_ids():
    splits, _ = load_splits(SourceConfig(builtin_size=40, seed=0))
    ids = [r["row_id"] for r in splits["train"]] + [r["row_id"] for r in splits["test"]]
    assert sorted(ids) == list(range(40)) and len(splits["test"]) == 4
    assert splits == load_splits(SourceConfig(builtin_size=40, seed=0))[0]


def _write(path, rows):
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text("question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in rows))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_local_files_load_with_their_prompt_field(tmp_path, suffix):
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(20)]
    path = tmp_path / f"data{suffix}"
    _write(path, rows)
    splits, _ = load_splits(SourceConfig(train_dataset=str(path), prompt_field="question", test_fraction=0.25))
    got = {r["row_id"]: r["question"] for s in splits.values() for r in s}
    assert got == {i: f"q{i}" for i in range(20)} and len(splits["test"]) == 5


def test_separate_train_and_test_sources_and_max_samples(tmp_path):
    _write(tmp_path / "train.jsonl", [{"question": f"t{i}", "answer": "1"} for i in range(10)])
    _write(tmp_path / "test.jsonl", [{"question": f"e{i}", "answer": "1"} for i in range(10)])
    splits, _ = load_splits(SourceConfig(train_dataset=str(tmp_path / "train.jsonl"),
                                      test_dataset=str(tmp_path / "test.jsonl"), prompt_field="question",
                                      max_samples=3))
    assert [r["question"] for r in splits["train"]] == ["t0", "t1", "t2"]
    assert [r["question"] for r in splits["test"]] == ["e0", "e1", "e2"]


def test_a_folder_of_files_is_one_source(tmp_path):
    for part in range(2):
        _write(tmp_path / f"part{part}.parquet", [{"question": f"p{part}-{i}", "answer": "0"} for i in range(5)])
    splits, _ = load_splits(SourceConfig(train_dataset=str(tmp_path), prompt_field="question"))
    assert sum(len(s) for s in splits.values()) == 10


def _hub_layout(root, train_rows, test_rows):
    """A folder as the hub keeps a dataset: data/<split>-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(train_rows), root / "data" / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(test_rows), root / "data" / "test-00000-of-00001.parquet")


def _saved_dict(root, train_rows, test_rows):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(train_rows),
                          "test": datasets.Dataset.from_list(test_rows)}).save_to_disk(str(root))


TRAIN_ROWS = [{"question": f"train question {i}", "answer": str(i)} for i in range(7)]
TEST_ROWS = [{"question": f"test question {i}", "answer": str(100 + i)} for i in range(3)]


@pytest.mark.parametrize("layout", [_hub_layout, _saved_dict])
def test_a_local_folder_is_read_per_split(tmp_path, layout):
    """--train-dataset DIR --train-split train --test-dataset DIR --test-split test: each split holds exactly its
    files' rows, so no test row can leak into train."""
    layout(tmp_path / "ds", TRAIN_ROWS, TEST_ROWS)
    folder = str(tmp_path / "ds")
    splits, _ = load_splits(SourceConfig(train_dataset=folder, train_split="train", test_dataset=folder,
                                         test_split="test", prompt_field="question"))
    train, test = [r["question"] for r in splits["train"]], [r["question"] for r in splits["test"]]
    assert train == [r["question"] for r in TRAIN_ROWS] and test == [r["question"] for r in TEST_ROWS]
    assert not set(train) & set(test)
    assert [r["answer"] for r in splits["test"]] == ["100", "101", "102"]


@pytest.mark.parametrize("layout", [_hub_layout, _saved_dict])
def test_a_split_the_folder_lacks_is_one_error_listing_its_splits(tmp_path, layout):
    layout(tmp_path / "ds", TRAIN_ROWS, TEST_ROWS)
    with pytest.raises(UserError, match=r"split 'validation' is not in .*ds; its splits are: train, test"):
        load_splits(SourceConfig(train_dataset=str(tmp_path / "ds"), test_dataset=str(tmp_path / "ds"),
                                 test_split="validation", prompt_field="question"))


def test_a_saved_dataset_is_one_split(tmp_path):
    import datasets

    datasets.Dataset.from_list(TRAIN_ROWS).save_to_disk(str(tmp_path / "one"))
    splits, _ = load_splits(SourceConfig(train_dataset=str(tmp_path / "one"), prompt_field="question",
                                         test_fraction=0.3))
    assert sorted(r["row_id"] for s in splits.values() for r in s) == list(range(7))
    with pytest.raises(UserError, match="split 'test' is not in .*one; its splits are: train"):
        load_splits(SourceConfig(train_dataset=str(tmp_path / "one"), test_dataset=str(tmp_path / "one"),
                                 prompt_field="question"))


def test_missing_prompt_field_names_the_columns(tmp_path):
    _write(tmp_path / "d.jsonl", [{"question": "q", "answer": "1"}])
    with pytest.raises(UserError, match="'prompt' is not in .*question, answer"):
        load_splits(SourceConfig(train_dataset=str(tmp_path / "d.jsonl")))


def test_empty_dataset_is_refused(tmp_path):
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), tmp_path / "e.parquet")
    with pytest.raises(UserError, match="empty"):
        load_splits(SourceConfig(train_dataset=str(tmp_path / "e.parquet")))


def test_missing_and_unreadable_paths(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_splits(SourceConfig(train_dataset=str(tmp_path / "absent.parquet")))
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UserError, match="cannot read"):
        load_splits(SourceConfig(train_dataset=str(tmp_path / "bad.parquet")))


def test_bad_rows_are_skipped_and_counted(tmp_path):
    prompts = ["ok one", "", "   ", None, "ok two"]
    pq.write_table(pa.table({"prompt": prompts}), tmp_path / "d.parquet")
    splits, skipped = load_splits(SourceConfig(train_dataset=str(tmp_path / "d.parquet"),
                                               test_dataset=str(tmp_path / "d.parquet")))
    assert [r["row_id"] for r in splits["train"]] == [0, 4]
    assert skipped["train"] == {"empty_prompt": 2, "missing_prompt": 1} == skipped["test"]


def test_non_string_prompts_are_skipped(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"prompt": "fine"}\n{"prompt": 12}\n')
    splits, skipped = load_splits(SourceConfig(train_dataset=str(tmp_path / "d.jsonl"),
                                               test_dataset=str(tmp_path / "d.jsonl")))
    assert [r["question"] for r in splits["train"]] == ["fine"] and skipped["train"] == {"non_string_prompt": 1}


def test_id_field_gives_row_ids_and_duplicates_are_refused(tmp_path):
    pq.write_table(pa.table({"prompt": ["a", "b", "c"], "uid": [30, 10, 20]}), tmp_path / "ok.parquet")
    splits, _ = load_splits(SourceConfig(train_dataset=str(tmp_path / "ok.parquet"),
                                         test_dataset=str(tmp_path / "ok.parquet"), id_field="uid"))
    assert [(r["row_id"], r["question"]) for r in splits["train"]] == [(30, "a"), (10, "b"), (20, "c")]
    pq.write_table(pa.table({"prompt": ["a", "b"], "uid": [7, 7]}), tmp_path / "dup.parquet")
    with pytest.raises(UserError, match="duplicate ids, e.g. \\[7\\]"):
        load_splits(SourceConfig(train_dataset=str(tmp_path / "dup.parquet"), id_field="uid"))


def test_string_label_columns_are_class_ids_numbered_alike_in_every_source(tmp_path):
    from raypipe.config import LabelConfig, ModelConfig
    from raypipe.labels.catalog import plan

    _write(tmp_path / "train.jsonl", [{"prompt": f"t{i}", "colour": c, "n": i}
                                      for i, c in enumerate(["red", "blue", None, "red"])])
    _write(tmp_path / "test.jsonl", [{"prompt": "e0", "colour": "green", "n": 0}])
    config = SourceConfig(train_dataset=str(tmp_path / "train.jsonl"), test_dataset=str(tmp_path / "test.jsonl"),
                          label_columns=["colour", "n"])
    splits, _ = load_splits(config)
    classes = ["blue", "green", "red"]  # sorted over both sources: the test-only class has an id too
    assert [r["columns"]["colour"] for r in splits["train"]][:2] == [2.0, 0.0]
    assert splits["train"][2]["columns"]["colour"] != splits["train"][2]["columns"]["colour"]  # missing: NaN
    assert splits["test"][0]["columns"] == {"colour": 1.0, "n": 0.0}
    from raypipe.data import open_sources

    sources, _ = open_sources(config)
    planned = plan(ModelConfig("m", "m"), LabelConfig(), ["colour", "n"], False, classes=sources["train"].classes)
    assert planned["colour"].kind == "categorical" and planned["colour"].classes == classes
    assert planned["n"].kind == "given" and planned["n"].classes is None


def test_a_label_column_of_lists_is_refused_naming_its_type(tmp_path):
    _write(tmp_path / "d.jsonl", [{"prompt": "a", "tags": [1, 2]}])
    with pytest.raises(UserError, match="label column 'tags' .* must hold numbers, booleans or class names"):
        load_splits(SourceConfig(train_dataset=str(tmp_path / "d.jsonl"), label_columns=["tags"]))


@pytest.mark.parametrize("text, expected", [
    ("ood=data/ood.jsonl", ("ood", "data/ood.jsonl", "test")),
    ("ood=my_org/dataset:validation", ("ood", "my_org/dataset", "validation")),
    ("objects_OOD=trigger:runs/exp:test_objects_OOD", ("objects_OOD", "trigger:runs/exp", "test_objects_OOD")),
    ("hard=trigger:runs/exp", ("hard", "trigger:runs/exp", "test")),
    ("more=builtin:arithmetic", ("more", "builtin:arithmetic", "test")),
    ("x = /data/with:colon/file.parquet ", ("x", "/data/with:colon/file.parquet", "test")),
])
def test_an_evaluation_split_is_name_source_and_split(text, expected):
    from raypipe.data import parse_eval_split

    split = parse_eval_split(text)
    assert (split.name, split.spec, split.split) == expected


@pytest.mark.parametrize("text, message", [
    ("data/ood.jsonl", "NAME=SOURCE"), ("=data/ood.jsonl", "NAME=SOURCE"), ("ood=", "NAME=SOURCE"),
    ("test=data/ood.jsonl", "not one of train, test, cv"), ("2nd=a.jsonl", "a letter first"),
    ("o d=a.jsonl", "letters, digits"),
])
def test_a_bad_evaluation_split_is_one_clear_error(text, message):
    from raypipe.data import parse_eval_split

    with pytest.raises(UserError, match=message):
        parse_eval_split(text)
