"""Hybrid parallelism: model-parallel (row-sharded) embeddings over AlltoAll, data-parallel dense
layers over AllReduce, and the process-group setup. One module per role:

- ``env``: reads the launcher's variables, joins the process group (the only module that does);
- ``plan``: the sharding plan as printable data (no processes needed);
- ``sharded_embeddings``: the sharded twin of ``trainer.embeddings.EmbeddingCollection``;
- ``dense_sync``: bucketed all-reduce of dense gradients, start-up broadcast;
- ``comm``: the collectives, with bytes and calls counted per step;
- ``apply``: builds the model with sharded embeddings and replicated dense layers;
- ``reshard``: shards <-> full table, between world sizes;
- ``metrics_sync``: evaluation metrics over every rank's samples;
- ``launch``: spawn N local processes (tests, benchmarks);
- ``des`` / ``des_plan``: distributed equivalent substitution (owners compute LR / FM / first-layer
  partial results; which operators apply, their bytes, ``auto``'s choice).

The MixCache behind a shard (host rows, device cache) is ``trainer/cache.py``: it needs no
communication, so it lives outside this package and serves the plain collection too.
"""
