import json

import pytest
import torch

from raypipe.errors import UserError
from raypipe.manifest import config_differences
from raypipe.store import FORMAT, load_rollouts, load_split, write_manifest, write_shard


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
