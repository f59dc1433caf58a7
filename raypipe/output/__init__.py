"""A build on disk, owned here: its layout (layout.py), the manifest as typed records (records.py) with its reading,
writing and checks (manifest.py), the writer of one shard's files (shards.py) and the reader of a build (reader.py).

A shard is complete only when the manifest, renamed into place after the shard's files, lists it as complete with the
sha256 of each file; readers read only such shards and check their hashes, so a leftover temporary file or a
half-written shard is never read. Files no complete shard names are removed when a build finishes. What writes or
checks takes a `fs.Location` (a local folder or a pyarrow filesystem URI: `s3://bucket/run`, `gs://...`,
`file:///...`); the reader (`Build`, `load_split`, `load_rollouts`) takes the folder as users name it.
"""

from raypipe.output.layout import FEATURES, LABEL_PREFIX, MANIFEST, shard_name
from raypipe.output.manifest import BuildManifest, now, read_manifest, read_manifest_json, verify_shard, write_manifest
from raypipe.output.reader import Build, load_rollouts, load_split
from raypipe.output.records import (
    COMPLETE,
    FAILED,
    FORMAT,
    PENDING,
    BuildRecord,
    FeatureLayout,
    LabelDefinition,
    ModelRecord,
    ShardRecord,
    SplitRecord,
)
from raypipe.output.shards import write_shard

__all__ = ["COMPLETE", "FAILED", "FEATURES", "FORMAT", "LABEL_PREFIX", "MANIFEST", "PENDING", "Build", "BuildManifest",
           "BuildRecord", "FeatureLayout", "LabelDefinition", "ModelRecord", "ShardRecord", "SplitRecord",
           "load_rollouts", "load_split", "now", "read_manifest", "read_manifest_json", "shard_name", "verify_shard",
           "write_manifest", "write_shard"]
