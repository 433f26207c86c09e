"""Hybrid parallelism: model-parallel (row-sharded) embeddings over AlltoAll, data-parallel dense
layers over AllReduce, and the process-group setup. One module per role:

- ``env``: reads the launcher's variables, joins the process group (the only module that does);
- ``plan``: the sharding plan as printable data (no processes needed);
- ``sharded_embeddings``: the collection of every configuration but the plain reference (rows
  owned by ranks; optionally MixCache and DES; world size 1 included);
- ``dense_sync``: bucketed all-reduce of dense gradients, start-up broadcast;
- ``comm``: the collectives, with bytes and calls counted per step;
- ``apply``: builds the model with sharded embeddings and replicated dense layers;
- ``reshard``: shards <-> full table, between world sizes;
- ``metrics_sync``: evaluation metrics over every rank's samples;
- ``launch``: spawn N local processes (tests, benchmarks);
- ``des`` / ``des_plan``: distributed equivalent substitution inside the sharded collection (owners
  compute LR / FM / first-layer partial sums; which operators apply, their bytes, ``auto``'s
  choice).

The MixCache behind a shard (host rows, device cache: ``CachedRows``) is ``trainer/cache.py``: it
needs no communication, so it lives outside this package; one process with a cache runs the
sharded collection at world size 1.
"""
