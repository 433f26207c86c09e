"""The KServe model server of metarec exports (``python -m components.serve``).

- ``host.py``: what is served, without the server: the loaded export (full or a delta chain),
  the hot swap to a newly promoted champion, the per-task adaptation cache;
- ``protocol.py``: Open Inference Protocol v2 requests -> samples, scores -> responses;
- ``server.py``: the ``kserve.Model`` and the entry point (KServe's ModelServer).

The Dockerfile beside this file builds the server image; ``manifests/overlays/serving`` deploys it
as a KServe InferenceService.
"""
