import os
import time
from pathlib import Path

import pytest
import torch

from raypipe.output import load_rollouts, load_split
from tests.conftest import manifest_json, run_cli

# A small build on the embedded default: 20 built-in prompts, 3 layers x 2 positions, shards of 6 rows; 128 tokens
# make two of the 18 train trajectories loop, so probes have both classes.
BUILD_ARGS = ["--preset", "smollm2_135m", "--builtin-size", "20", "--shard-size", "6", "--max-tokens", "128",
              "--layers", "0,15,-1", "--positions", "-3,-1"]


SESSION_STARTED = time.time()


def _shm_in_use() -> set[str]:
    """The /dev/shm files some live process maps or holds open."""
    used = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            used.update(line.split(None, 5)[5].strip() for line in (proc / "maps").read_text().splitlines()
                        if "/dev/shm/" in line and len(line.split(None, 5)) == 6)
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("/dev/shm/"):
                    used.add(target)
        except OSError:  # the process ended, or is not ours to read
            continue
    return {path.removesuffix(" (deleted)") for path in used}


@pytest.fixture(autouse=True, scope="module")
def no_leaked_shared_memory():
    """After each module: remove the shared-memory segments this session's killed engines left in /dev/shm (vLLM's
    message queues and CPU all-reduce buffers: a process killed by SIGKILL, as the resume tests kill builds, never
    unlinks them), those no live process uses. A machine whose /dev/shm is small would otherwise fill up over the
    suite's many engines and make later engines die."""
    yield
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return
    used = _shm_in_use()
    for path in shm.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime >= SESSION_STARTED and str(path) not in used:
                path.unlink()
        except OSError:
            continue


@pytest.fixture(scope="session")
def shared_ray():
    """{"RAY_ADDRESS": ...} of one local Ray head (this machine's CPUs, loopback) that the CLI runs of the tests join,
    as under `ray job submit`, instead of each starting its own (about 13 s a start here). Tests about how Ray starts
    or where work is placed (a dead head, `ray start` under jobs, logical GPUs, lost nodes) start their own."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count(),
                                                            "node_ip_address": "127.0.0.1",
                                                            "include_dashboard": False})
    try:
        yield {"RAY_ADDRESS": cluster.address}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def local_build(tmp_path_factory, shared_ray):
    """One real build (Ray, vLLM CPU, Transformers), shared by the integration tests that only read it."""
    out = tmp_path_factory.mktemp("build") / "out"
    result = run_cli("raypipe.build", *BUILD_ARGS, "--out-dir", str(out), env=shared_ray)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out.parent / "console.stdout").write_text(result.stdout)
    (out.parent / "console.stderr").write_text(result.stderr)
    return out


def assert_same_dataset(a, b):
    """Two builds hold the same splits, rows, labels, rollouts and (to float tolerance) features."""
    splits = sorted(manifest_json(a)["splits"])
    assert splits == sorted(manifest_json(b)["splits"])
    for split in splits:
        x, y = load_split(a, split), load_split(b, split)
        assert x["row_id"].tolist() == y["row_id"].tolist()
        assert x["label.loop"].tolist() == y["label.loop"].tolist()
        torch.testing.assert_close(x["features"], y["features"], atol=1e-4, rtol=1e-4)
        assert load_rollouts(a, split)["token_ids"].to_pylist() == load_rollouts(b, split)["token_ids"].to_pylist()


@pytest.fixture(scope="session")
def tiny_tp_model(tmp_path_factory, embedded_path):
    """A random-weight Llama of 4 heads (2 KV heads) with the embedded tokenizer: tensor parallelism of 2 needs heads
    it can split, which SmolLM2's 9 are not. Real vLLM runs it; its text is noise, which tp=2 tests do not read."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny") / "model"
    tokenizer = AutoTokenizer.from_pretrained(embedded_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
