"""The hub push (raypipe.finetune.hub) through huggingface_hub's real upload path against a local stand-in of the hub
API on loopback: the repository is created private, a commit carries the folder (safetensors through LFS), the
token and endpoint come from a .env file, and the token is sent in a header but never printed."""

import pytest

from tests.hub_standin import HubStandIn

TOKEN = "hf_standin_secret_token_0123456789"


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    standin = HubStandIn().start()
    env = tmp_path / ".env"
    env.write_text(f"HF_TOKEN={TOKEN}\nHF_ENDPOINT={standin.url}\n")
    for name in ("HF_TOKEN", "HF_ENDPOINT"):  # whatever the .env sets is undone after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)  # see tests/hub_standin.py
    # The suite runs offline (tests/conftest.py); this test's hub is the stand-in on loopback.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield standin, str(env)
    standin.stop()


def test_a_folder_is_pushed_as_one_commit_with_the_token_from_dotenv(hub, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    from raypipe.finetune.hub import HubRepo

    standin, dotenv = hub
    folder = tmp_path / "adapter"
    folder.mkdir()
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "README.md").write_text("---\nlibrary_name: peft\n---\n# adapter\n")
    repo = HubRepo("me/run-seed0", private=True, dotenv=dotenv)
    assert repo.url == f"{standin.url}/me/run-seed0"
    assert standin.repos["me/run-seed0"]["visibility"] == "private"
    url = repo.push(str(folder), "epoch 1/2")
    assert url.startswith(f"{standin.url}/me/run-seed0/commit/") and not standin.errors
    (commit,) = standin.commits
    assert commit.message == "epoch 1/2" and set(commit.files) == {"adapter_model.safetensors",
                                                                   "adapter_config.json", "README.md"}
    assert commit.files["adapter_model.safetensors"] == (folder / "adapter_model.safetensors").read_bytes()
    assert len(standin.objects) == 1  # the weights went through the LFS batch API and its upload
    assert standin.authorizations == {f"Bearer {TOKEN}"}
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
