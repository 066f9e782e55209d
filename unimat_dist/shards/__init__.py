"""Training-side access to ingested UniMat datasets (WebDataset shards + manifest in cloud storage).

    from unimat_dist.shards import open_shards, read_manifest
    m = read_manifest("gs://bucket/mp20")                  # spec, normalizer, properties, split counts
    for batch in open_shards("gs://bucket/mp20", "train", spec, rank=r, world_size=n, batch_size=64):
        ...  # {"positions", "mask", "lattice", "properties", "id"}

``unimat_dist.storage`` resolves URIs (file://, s3://, gs://, emulators); ``manifest`` reads/validates the
manifest, ``sample_format`` defines a sample's bytes, ``tar_shards`` writes/reads deterministic tars,
``reader`` is the sharded, shuffled, resumable batch reader.
"""
from .manifest import Manifest, ShardInfo, check_spec, read_manifest
from .reader import ShardLoader, assign_shards, iter_samples, open_shards

__all__ = ["Manifest", "ShardInfo", "ShardLoader", "assign_shards", "check_spec", "iter_samples", "open_shards", "read_manifest"]
