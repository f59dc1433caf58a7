"""The manifest on resume (no model, no Ray): complete shards are re-checked by sha256, a damaged one goes back to
pending and is the only one rebuilt, temporaries are removed, a changed configuration is refused."""

import json

import pytest
import torch

from raypipe.config import BuildConfig, get_preset
from raypipe.errors import UserError
from raypipe.manifest import Manifest
from raypipe.plan import BuildInputs, ShardPlan
from raypipe.store import write_shard


def _inputs() -> BuildInputs:
    return BuildInputs(None, 30, 4, [30], [-1], {"loop": {"kind": "binary", "counts": {}}}, {}, {})


def _build(out, shards=3):
    """A build whose shards were all written and recorded complete, as a finished run leaves it."""
    config = BuildConfig(out_dir=str(out), model=get_preset("smollm2_135m"))
    plans = [ShardPlan("train", i, "train", [2 * i, 2 * i + 1], [2 * i, 2 * i + 1]) for i in range(shards)]
    manifest = Manifest.open(config, _inputs(), plans, overwrite=False)
    for plan in plans:
        tensors = {"features": torch.zeros(2, 1, 1, 4), "row_id": torch.tensor(plan.row_ids),
                   "label.loop": torch.tensor([0, 1])}
        entry = write_shard(str(out), "train", plan.index, tensors, {"row_id": plan.row_ids})
        manifest.complete({**entry, "label_counts": {"loop": {"0": 1, "1": 1}}, "skipped": {}})
    return config, plans


def test_a_damaged_shard_goes_back_to_pending_and_alone(tmp_path, capsys):
    config, plans = _build(tmp_path / "out")
    victim = tmp_path / "out" / "train" / "shard-00001.safetensors"
    victim.write_bytes(victim.read_bytes()[:-10])
    (tmp_path / "out" / "train" / ".shard-00002.safetensors.tmp-1234abcd").write_bytes(b"half a shard")
    manifest = Manifest.open(config, _inputs(), plans, overwrite=False)
    assert [p.name for p in manifest.pending(plans)] == ["shard-00001"]
    assert "shard-00001.safetensors is corrupt" in capsys.readouterr().out
    assert not list((tmp_path / "out").rglob(".*.tmp-*"))  # temporaries are removed, never read
    assert manifest.data["labels"]["loop"]["counts"]["train"] == {"0": 2, "1": 2}  # counts only complete shards


def test_a_missing_shard_file_is_rebuilt_too(tmp_path):
    config, plans = _build(tmp_path / "out")
    (tmp_path / "out" / "train" / "shard-00000.rollouts.parquet").unlink()
    assert [p.name for p in Manifest.open(config, _inputs(), plans, overwrite=False).pending(plans)] == ["shard-00000"]


def test_a_changed_configuration_is_refused_naming_the_field(tmp_path):
    config, plans = _build(tmp_path / "out")
    before = (tmp_path / "out" / "manifest.json").read_text()
    changed = BuildConfig(out_dir=str(tmp_path / "out"), model=get_preset("smollm2_135m"), shard_size=7)
    with pytest.raises(UserError, match="differs in: shard_size"):
        Manifest.open(changed, _inputs(), plans, overwrite=False)
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == json.loads(before)


def test_a_shard_whose_rows_do_not_add_up_is_never_recorded_complete(tmp_path):
    config = BuildConfig(out_dir=str(tmp_path / "out"), model=get_preset("smollm2_135m"))
    plans = [ShardPlan("train", 0, "train", [0, 1, 2], [0, 1, 2])]
    manifest = Manifest.open(config, _inputs(), plans, overwrite=False)
    with pytest.raises(RuntimeError, match="planned 3"):
        manifest.complete({"split": "train", "name": "shard-00000", "rows": 2, "skipped": {}, "files": {}})
    manifest.complete({"split": "train", "name": "shard-00000", "rows": 2, "skipped": {"empty_prompt": 1},
                       "files": {}})
    assert manifest.data["skipped_rows"]["train"] == {"empty_prompt": 1}
