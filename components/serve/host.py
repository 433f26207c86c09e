"""What the model server serves, without the server: the loaded export, its hot swap, its cache.

    host = ModelHost("/mnt/models")       # a model directory (its CHAMPION) or one version
    host.start()                          # loads the champion; refuses a tampered export
    result = host.score(request)          # ScoreRequest -> ScoreResult, on the current model
    host.poll()                           # a newly promoted champion? load it aside, then swap

**Hot swap.** A request takes the current :class:`Served` once and scores on it to the end. A
new champion is loaded (every checksum of its chain verified, the graph checked) on the poller's
thread while requests go on; only then does one assignment make it current. Requests that began
before finish on the old model, later ones run on the new one: none waits, none fails. A version
that cannot be loaded (tampered, incomplete, a broken delta chain) is never served: the old model
stays current and :attr:`ModelHost.last_error` says why (the server logs it).

**Adaptation.** A request may name its task and carry the task's support events; the model is
adapted to them once per (model version, task, task version) and kept in a bounded LRU cache
(:func:`trainer.exported.adaptation.adapt_task`), so later requests of that task version only
score. A request naming a cached task version needs no support events; one naming a task version
this model has not adapted to, without support events, is scored unadapted (``adapted`` false
in the response: the client sends the events again, e.g. after a swap dropped the cache).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from trainer.exported.adaptation import TaskAdaptation
    from trainer.exported.model import ExportedModel
    from trainer.exported.scoring import SupportSet

log = logging.getLogger(__name__)
CACHE_TASKS = 4096
"""Adapted task versions kept per served model (least recently used dropped first)."""
_FUNC_TRANSFORMS = threading.Lock()
"""Adaptation runs the trainer's inner loop through ``torch.func.functional_call``, which swaps the
shared model's parameters in place while it runs (not safe across threads): one adapted request at
a time; the unadapted ones (the exported graph) run concurrently."""


class RequestError(ValueError):
    """A request the model cannot score (shapes, types, an unknown task version): the client's."""


@dataclass
class ScoreRequest:
    """One request: ``n`` candidates of one page view, optionally of one task."""

    sparse: np.ndarray
    """(n, S) int64 local ids per slot, encoded as the ETL encodes them."""
    dense: np.ndarray
    """(n, Dn) float32 transformed dense features."""
    task: str | None = None
    task_version: str | None = None
    """Names the support set: a new version of a task's support events, a new adaptation."""
    support: SupportSet | None = None


@dataclass
class ScoreResult:
    logits: np.ndarray
    """``(n,)``, or ``(n, 2)`` ``[ctr, cvr]`` for an ESMM model."""
    version: str
    adapted: bool

    @property
    def scores(self) -> np.ndarray:
        """The click (CTR head's) probability ``(n,)``."""
        return _sigmoid(self.logits if self.logits.ndim == 1 else self.logits[:, 0])

    def outputs(self) -> dict[str, np.ndarray]:
        """The response's tensors: ``score`` and ``logit`` (the CTR head's); for an ESMM model
        also ``ctcvr_score`` (pCTR x pCVR) and ``cvr_logit``."""
        if self.logits.ndim == 1:
            return {"score": self.scores, "logit": self.logits}
        ctr, cvr = self.logits[:, 0], self.logits[:, 1]
        ctcvr = (_sigmoid(ctr).astype(np.float64) * _sigmoid(cvr)).astype(np.float32)
        return {"score": self.scores, "logit": ctr, "ctcvr_score": ctcvr, "cvr_logit": cvr}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


@dataclass
class Served:
    """One loaded version and its adaptations (dropped with it)."""

    model: ExportedModel
    cache: OrderedDict[tuple[str, str], TaskAdaptation] = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def version(self) -> str:
        return self.model.version

    def adaptation(self, req: ScoreRequest) -> TaskAdaptation | None:
        """The task's adaptation: cached, or adapted now on the request's support set."""
        from trainer.exported.adaptation import adapt_task

        if req.task is None:
            return None
        key = (req.task, req.task_version or "")
        with self.lock:
            found = self.cache.get(key)
            if found is not None:
                self.cache.move_to_end(key)
                return found
        if req.support is None:
            return None  # not adapted on this version (e.g. just swapped in): unadapted, said so
        if len(req.support) < int(self.model.spec.get("min_support", 1)):
            return None  # training never adapted on fewer: unadapted, as the scorer does
        try:
            with _FUNC_TRANSFORMS:
                adapted = adapt_task(self.model, req.support, req.task)
        except ValueError as e:
            raise RequestError(str(e)) from None
        with self.lock:
            self.cache[key] = adapted
            while len(self.cache) > CACHE_TASKS:
                self.cache.popitem(last=False)
        return adapted

    def score(self, req: ScoreRequest) -> ScoreResult:
        from trainer.exported.scoring import score_samples

        S, Dn = self.model.layout.sparse_width, self.model.layout.dense_width
        n = len(req.sparse)
        if req.sparse.shape != (n, S) or req.dense.shape != (n, Dn) or n == 0:
            raise RequestError(
                f"expected sparse ({n or 'n'}, {S}) and dense ({n or 'n'}, {Dn}) for model "
                f"{self.version}, n >= 1; got {req.sparse.shape} and {req.dense.shape}"
            )
        buckets = np.asarray(
            [self.model.layout.feature_buckets[f] for f in self.model.layout.slot_feature.tolist()]
        )
        if np.any(req.sparse < 0) or np.any(req.sparse >= buckets):
            raise RequestError(
                f"sparse ids out of range: slot s takes 0 <= id < {buckets.tolist()}"
            )
        adapted = self.adaptation(req)
        if adapted is None:
            return ScoreResult(
                score_samples(self.model, req.sparse, req.dense), self.version, False
            )
        with _FUNC_TRANSFORMS:
            logits = adapted.logits(req.sparse, req.dense)
        return ScoreResult(logits, self.version, True)


class ModelHost:
    """The served model of ``source``: a model directory (serves its ``CHAMPION``, follows it)
    or one version directory (served as is)."""

    def __init__(self, source: str | Path) -> None:
        self.source = Path(source)
        self.current: Served | None = None
        self.last_error: str | None = None
        self.swaps = 0
        self._swap_lock = threading.Lock()

    @property
    def follows_champion(self) -> bool:
        from components.promotion.registry import CHAMPION

        return (self.source / CHAMPION).exists()

    def wanted(self) -> Path:
        """The version directory to serve now."""
        from components.promotion.registry import read_champion
        from trainer.exported.artifact import list_versions

        if not self.source.is_dir():
            raise FileNotFoundError(f"--model_dir {self.source} does not exist")
        if not self.follows_champion:
            if list_versions(self.source):
                raise FileNotFoundError(
                    f"--model_dir {self.source} holds versions but no CHAMPION: promote one "
                    "(metarec promote) or pass a version directory"
                )
            return self.source
        pointer = read_champion(self.source.parent, self.source.name)
        assert pointer is not None
        return self.source / pointer.version

    def _load(self, path: Path) -> Served:
        from trainer.exported.model import load_exported

        return Served(load_exported(path))

    def start(self) -> Served:
        """Load the version to serve; raises (ExportError, ...) when it cannot be served."""
        self.current = self._load(self.wanted())
        log.info("serving %s", self.current.model.path)
        return self.current

    def poll(self) -> bool:
        """Swap to the champion if it changed and loads; True when a swap happened."""
        from trainer.exported.artifact import ExportError

        with self._swap_lock:
            try:
                path = self.wanted()
                if self.current is not None and path == self.current.model.path:
                    return False
                served = self._load(path)
            except (ExportError, OSError, ValueError) as e:
                if str(e) != self.last_error:
                    log.error("not swapping: %s (still serving %s)", e,
                              self.current and self.current.version)  # fmt: skip
                self.last_error = str(e)
                return False
            previous, self.current = self.current, served
            self.last_error, self.swaps = None, self.swaps + 1
            log.info("swapped %s -> %s", previous and previous.version, served.version)
            return True

    def watch(self, every_s: float, stop: threading.Event) -> threading.Thread:
        """Poll every ``every_s`` seconds on a daemon thread until ``stop`` is set."""

        def loop() -> None:
            while not stop.wait(every_s):
                self.poll()

        thread = threading.Thread(target=loop, name="metarec-champion-watch", daemon=True)
        thread.start()
        return thread

    def score(self, req: ScoreRequest) -> ScoreResult:
        served = self.current  # one read: the whole request runs on this version
        if served is None:
            raise RuntimeError("no model loaded: call start() first")
        return served.score(req)
