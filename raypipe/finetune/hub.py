"""Pushing a finished run's folders to the Hugging Face Hub (the seed's save_checkpoints_to_hub; off by default).

The token comes from the environment (HF_TOKEN) or `huggingface-cli login`; it is never printed or saved.
"""

from __future__ import annotations


def push_folder(folder: str, repo_id: str, *, private: bool = True, message: str = "raypipe finetune") -> str:
    """Create the model repository if needed and upload the folder; return the repository's URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model", commit_message=message)
    return str(url)
