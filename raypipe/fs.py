"""Where a build's output lives: a local folder, or a pyarrow filesystem URI (`s3://`, `gs://`, `file://`, ...).

On a multi-node cluster local disks are not shared, so every node's writer must reach the same place: a shared
mount or an object store. All of raypipe's file I/O goes through `Location`, which keeps the local case on plain
`os` calls (with fsync before the rename) and hands the rest to `pyarrow.fs`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

from raypipe.jsonsafe import json_safe


def write_token() -> str:
    """A short random token naming one write's files, so that two writers of the same name never collide."""
    return uuid.uuid4().hex[:8]


class Location:
    """A folder, addressed by paths relative to it ('manifest.json', 'train/shard-00000.safetensors')."""

    def __init__(self, root: str):
        import pyarrow.fs as pafs

        if "://" in root:
            self.fs, self.root = pafs.FileSystem.from_uri(root)
            self.local = isinstance(self.fs, pafs.LocalFileSystem)
        else:
            self.fs, self.root, self.local = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(root)), True

    def path(self, relative: str = "") -> str:
        return f"{self.root.rstrip('/')}/{relative}" if relative else self.root

    def write_atomic(self, relative: str, data: bytes) -> str:
        """Write bytes under a temporary name, then rename into place (fsynced first when local); return sha256."""
        return self.write_atomic_chunks(relative, [data])

    def write_atomic_chunks(self, relative: str, chunks) -> str:
        """write_atomic for data made piece by piece (an iterable of bytes), never held whole."""
        final = self.path(relative)
        parent, name = final.rsplit("/", 1)
        tmp = f"{parent}/.{name}.tmp-{write_token()}"
        digest = hashlib.sha256()
        if self.local:
            os.makedirs(parent, exist_ok=True)
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    digest.update(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        else:
            # Object stores have no atomic rename; the manifest, written last, is what marks a shard complete.
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(tmp) as f:
                for chunk in chunks:
                    f.write(chunk)
                    digest.update(chunk)
            self.fs.move(tmp, final)
        return digest.hexdigest()

    def write_json(self, relative: str, value, indent: int | None = 1) -> str:
        """`value` as standard JSON (json_safe: NaN becomes null), written atomically; returns its sha256."""
        return self.write_atomic(relative, (json.dumps(json_safe(value), indent=indent) + "\n").encode())

    def read_bytes(self, relative: str) -> bytes:
        with self.fs.open_input_stream(self.path(relative)) as f:
            return f.read()

    def sha256(self, relative: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(relative)) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    def is_file(self, relative: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(relative)).type == pafs.FileType.File

    def list(self, relative: str = "") -> list[str]:
        """Names directly inside a folder; empty when it does not exist."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.path(relative), allow_not_found=True))
        return sorted(info.base_name for info in infos)

    def delete_file(self, relative: str) -> None:
        if self.is_file(relative):
            self.fs.delete_file(self.path(relative))

    def delete_dir(self, relative: str) -> None:
        import pyarrow.fs as pafs

        if self.fs.get_file_info(self.path(relative)).type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(relative))
