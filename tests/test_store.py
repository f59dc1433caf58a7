import json

import pytest
import torch

from raypipe.errors import UserError
from raypipe.output import FORMAT, load_rollouts, load_split
from raypipe.resume import config_differences
from tests.synthetic import write_manifest, write_shard


def _shard(split, index, row_ids, dtype=torch.float32):
    n = len(row_ids)
    tensors = {"features": torch.randn(n, 2, 3, 4).to(dtype), "row_id": torch.tensor(row_ids),
               "label.loop": torch.tensor([i % 2 for i in row_ids])}
    rollouts = {"row_id": row_ids, "prompt": [f"p{i}" for i in row_ids], "prompt_token_ids": [[1, i] for i in row_ids],
                "token_ids": [[[i, i]] for i in row_ids], "text": [[f"t{i}"] for i in row_ids],
                "finish_reason": [["stop"] for _ in row_ids]}
    return tensors, rollouts


@pytest.fixture(params=["path", "uri"])
def out(request, tmp_path):
    """The same folder given as a plain path and as a pyarrow filesystem URI."""
    return str(tmp_path) if request.param == "path" else f"file://{tmp_path}"


def _make_dataset(tmp_path, dtype=torch.float32):
    written = {}
    shards = {}
    for index, ids in enumerate([[0, 1, 2], [3, 4]]):
        tensors, rollouts = _shard("train", index, ids, dtype)
        entry = write_shard(tmp_path, "train", index, tensors, rollouts)
        shards[entry["name"]] = {**entry, "status": "complete"}
        written[index] = tensors
    write_manifest(tmp_path, {"format": FORMAT, "splits": {"train": {"shards": shards}}})
    return written


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_concatenates_shards_in_order(out, dtype):
    written = _make_dataset(out, dtype)
    loaded = load_split(out, "train")
    assert loaded["row_id"].tolist() == [0, 1, 2, 3, 4]
    assert loaded["features"].dtype == dtype
    assert torch.equal(loaded["features"], torch.cat([written[0]["features"], written[1]["features"]]))
    assert loaded["label.loop"].tolist() == [0, 1, 0, 1, 0]
    rollouts = load_rollouts(out, "train")
    assert rollouts["row_id"].to_pylist() == [0, 1, 2, 3, 4] and rollouts["text"].to_pylist()[4] == ["t4"]


def test_checksum_mismatch_is_refused(out, tmp_path):
    _make_dataset(out)
    path, = (tmp_path / "train").glob("shard-00001-*.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="shard-00001-[0-9a-f]{8}.safetensors is corrupt"):
        load_split(out, "train")
    path.unlink()
    with pytest.raises(UserError, match="shard-00001-[0-9a-f]{8}.safetensors is missing"):
        load_split(out, "train")


def test_truncated_sidecar_is_refused(tmp_path):
    _make_dataset(tmp_path)
    path, = (tmp_path / "train").glob("shard-00000-*.rollouts.parquet")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="corrupt"):
        load_rollouts(tmp_path, "train")


def test_only_complete_shards_are_read_and_temporaries_never(tmp_path):
    _make_dataset(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"]["shard-00001"]["status"] = "pending"
    write_manifest(tmp_path, manifest)
    (tmp_path / "train" / ".shard-00002.safetensors.tmp-1234").write_bytes(b"half")
    assert load_split(tmp_path, "train")["row_id"].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob("train/.*manifest*")) and not list(tmp_path.glob(".manifest*"))


def test_missing_manifest_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no manifest.json"):
        load_split(tmp_path, "train")


def test_config_differences_ignore_runtime_fields():
    old = {"out_dir": "a", "model": {"dp": 8, "temperature": 0.6, "model_id": "m"}, "shard_size": 64}
    new = {"out_dir": "b", "model": {"dp": 1, "temperature": 0.7, "model_id": "m"}, "shard_size": 32}
    assert config_differences(old, new) == ["model.temperature", "shard_size"]


def test_a_build_recorded_before_a_field_existed_still_resumes():
    """A manifest from an earlier release lacks the fields added since (eval_splits): compared as their declared
    defaults, the config matches; a field the user did set still differs."""
    from raypipe.config import BuildConfig, get_preset
    from raypipe.knobs import declared_defaults

    new = BuildConfig(out_dir="x", model=get_preset("smollm2_135m")).to_dict()
    old = {**new, "source": {k: v for k, v in new["source"].items() if k != "eval_splits"}}
    assert config_differences(old, new) == ["source.eval_splits"]  # what an old build met before the fix
    assert config_differences(old, new, declared_defaults(BuildConfig)) == []
    changed = {**new, "source": {**new["source"], "eval_splits": ["ood=x.jsonl"]}}
    assert config_differences(old, changed, declared_defaults(BuildConfig)) == ["source.eval_splits"]


@pytest.mark.parametrize("ranged", [False, True], ids=["memory-map", "range-reads"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_block_read_by_slices_equals_the_same_block_of_the_whole_split(out, ranged, dtype):
    from raypipe.output import Build

    written = _make_dataset(out, dtype)
    whole = torch.cat([written[0]["features"], written[1]["features"]])
    build = Build(out, ranged=ranged)
    for layers, positions in [([1], [0, 1, 2]), ([0, 1], [2, 0]), ([1, 0], [1])]:
        block = build.features("train", layers, positions)
        assert block.dtype == torch.float32
        assert torch.equal(block, whole[:, layers][:, :, positions].float())
    assert torch.equal(build.features("train", None, None, dtype=None), whole)
    small = build.tensors("train", ["row_id", "label.loop"])
    assert small["row_id"].tolist() == [0, 1, 2, 3, 4] and small["label.loop"].tolist() == [0, 1, 0, 1, 0]


def test_reading_one_layer_block_holds_that_block_not_the_file(tmp_path):
    """Peak memory of a process that verifies a 160 MB shard (streamed) and reads one layer of its 40: the block
    (4 MB) plus the interpreter, not the file."""
    import subprocess
    import sys

    rows, layers, positions, hidden = 250, 40, 8, 500
    features = torch.zeros(rows, layers, positions, hidden)
    features[:, 7] = torch.arange(rows, dtype=torch.float32)[:, None, None]
    entry = write_shard(tmp_path, "train", 0, {"features": features, "row_id": torch.arange(rows)},
                        {"row_id": list(range(rows))})
    write_manifest(tmp_path, {"format": FORMAT, "splits": {"train": {"shards": {
        entry["name"]: {**entry, "status": "complete"}}}}})
    del features
    script = (
        "import resource, sys, torch\n"
        "from raypipe.output import Build\n"
        "build = Build(sys.argv[1])\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "build.verify()\n"
        "block = build.features('train', [7], list(range(8)))\n"
        "assert block.shape == (250, 1, 8, 500) and block[3].eq(3).all()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    grown_kb = int(subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                                  check=True).stdout)
    file_mb, block_mb = rows * layers * positions * hidden * 4 / 2**20, rows * positions * hidden * 4 / 2**20
    assert grown_kb / 1024 < block_mb * 2 + 16 < file_mb / 4, (grown_kb / 1024, block_mb, file_mb)


def test_a_build_given_by_a_relative_path_is_opened_by_its_absolute_one(tmp_path, monkeypatch):
    """The path travels to Ray tasks, which run in their worker's folder: it must not depend on the driver's."""
    from raypipe.output import Build
    from tests.synthetic import write_planted_build

    write_planted_build(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    build = Build("data")
    assert build.out_dir == str(tmp_path / "data") and build.splits() == ["train", "test"]
