"""Pushing a finetune to the Hugging Face Hub, as the seed's `save_checkpoints_to_hub` does (off by default): every
epoch's adapter (the whole model, for full SFT) as one commit, then the final folder.

The token (HF_TOKEN) and the endpoint (HF_ENDPOINT: the Hub, or a private hub) come from the environment or the
driver's .env, read where the push runs (the Ray Train worker of rank 0). The token goes into request headers
only: it is never printed, logged or saved.
"""

from __future__ import annotations

import os


class HubRepo:
    """One model repository on the hub, created (or found) once; `push` commits a folder to its main branch."""

    def __init__(self, repo_id: str, *, private: bool = True, dotenv: str | None = None):
        from huggingface_hub import HfApi

        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(dotenv, override=False)  # the environment wins
        self.repo_id = repo_id
        self.api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=os.environ.get("HF_TOKEN") or None)
        self.url = str(self.api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True))

    def push(self, folder: str, message: str) -> str:
        """Upload the folder's files as one commit; return the commit's URL."""
        info = self.api.upload_folder(folder_path=folder, repo_id=self.repo_id, repo_type="model",
                                      commit_message=message)
        return str(info.commit_url)
