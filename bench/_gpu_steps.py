"""``bench/gpu.py`` parts 1 and 5: the trainer's step (plain, FOMAML, MAML) at each precision,
its exactness against fp32, the step's parts alone, the ``nn.EmbeddingBag`` + sparse Adam
baseline, and the ``torch.compile`` variant.

A step is the trainer's (``Trainer.train_step`` without the data-parallel hooks)::

    sparse = model.embeddings.lookup(batch)          # plain collection, VSI ids
    loss, _ = outer_loss(model, sparse, batch, meta) # trainer/meta.py (vmap inner loop)
    loss.backward(); optimizers.step()               # Adam + row-wise Adagrad

Precision variants: ``tf32`` lets CUDA matrix products run in TF32 for the whole step
(``torch.set_float32_matmul_precision("high")``, backward included); ``bf16`` runs the forward
(lookup and ``outer_loss``) under ``torch.autocast`` to bfloat16, backward outside it as autocast
prescribes (parameters, rows and optimizer state stay fp32). ``compile``
runs ``torch.compile(outer_loss)``. Exactness: one step from the same initial parameters on the
same batch, ``max |x - x_fp32|`` and ``||x - x_fp32|| / ||x_fp32||`` of the logits of every sample
and of the dense gradients; a variant is "exact enough" when both relative errors are within its
tolerance (:data:`TOLERANCE`).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench._gpu_common import (
    Budget,
    Shape,
    Timer,
    embedding_bytes,
    layout,
    model_flops,
    summarize,
)
from trainer.data.batch import EpisodeBatch
from trainer.meta import MetaConfig, outer_loss
from trainer.models import ModelConfig, RecModel, build_model
from trainer.optim import OptimConfig, build_optimizers
from trainer.sparse import SparseOut

MODES = ("plain", "fomaml", "maml")
TOLERANCE = {"tf32": 3e-3, "bf16": 3e-2, "compile": 1e-4}
"""Relative error (norm of the difference over the norm of fp32's) accepted as exact enough."""
OPTIM = OptimConfig(dense_lr=1e-3, sparse_lr=0.05)
StepFn = Callable[[EpisodeBatch], torch.Tensor]


def meta_config(mode: str) -> MetaConfig:
    """The benchmarked meta settings: one inner SGD step on all dense parameters."""
    if mode == "plain":
        return MetaConfig(mode="plain")
    return MetaConfig(mode=mode, inner_steps=1, inner_lr=0.1, adapt="dense")


_INITIAL: dict[tuple[Shape, torch.device], RecModel] = {}


def build(shape: Shape, device: torch.device) -> RecModel:
    """The MeLU concat-MLP at ``shape`` with the plain collection, seeded: the same initial model
    for every call (a copy of one built once: drawing 16M rows takes seconds each time)."""
    key = (shape, device)
    if key not in _INITIAL:
        cfg = ModelConfig(arch="melu", embedding_dim=shape.dim, mlp=shape.mlp)
        _INITIAL[key] = build_model(cfg, layout(shape), seed=0, device=device)
    return copy.deepcopy(_INITIAL[key])


@contextlib.contextmanager
def matmul_mode(name: str, device: torch.device) -> Iterator[None]:
    """Around a whole step: TF32 matrix products for ``tf32`` (CUDA only), else unchanged."""
    if name != "tf32":
        yield
        return
    if device.type != "cuda":
        raise ValueError("TF32 is a CUDA matrix-product mode")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def autocast(name: str, device: torch.device) -> torch.autocast:
    """Around the forward: bfloat16 autocast for ``bf16``, else a disabled autocast."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16")


def step_fn(shape: Shape, device: torch.device, mode: str, prec: str, loss_fn=outer_loss) -> StepFn:
    """One training step of a fresh model; returns the (detached) loss."""
    model, meta = build(shape, device), meta_config(mode)
    opt = build_optimizers(OPTIM, model)

    def step(batch: EpisodeBatch) -> torch.Tensor:
        with matmul_mode(prec, device):
            with autocast(prec, device):
                sparse = model.embeddings.lookup(batch)
                loss, _ = loss_fn(model, sparse, batch, meta)
            loss.backward()
            opt.step()
        return loss.detach()

    return step


def embedding_bag_fn(shape: Shape, device: torch.device) -> StepFn:
    """Baseline in plain PyTorch: ``nn.EmbeddingBag(sparse=True)`` over the stacked table (sum
    of one id per field, no VSI), the same MLP, ``SparseAdam`` + ``Adam``, plain training."""
    emb = nn.EmbeddingBag(shape.rows, shape.dim, mode="sum", sparse=True).to(device)
    widths = [shape.fields * shape.dim, *shape.mlp]
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), nn.ReLU()]
    mlp = nn.Sequential(*layers, nn.Linear(widths[-1], 1)).to(device)
    sparse_opt = torch.optim.SparseAdam(emb.parameters(), lr=1e-3)
    dense_opt = torch.optim.Adam(mlp.parameters(), lr=1e-3, fused=device.type == "cuda" or None)

    def step(batch: EpisodeBatch) -> torch.Tensor:
        ids = batch.ids.index_select(0, batch.inverse.reshape(-1)).view(-1, 1)  # (S*F, 1)
        x = emb(ids).view(-1, shape.fields * shape.dim)
        loss = F.binary_cross_entropy_with_logits(mlp(x).squeeze(-1), batch.click.reshape(-1))
        loss.backward()
        sparse_opt.step()
        dense_opt.step()
        sparse_opt.zero_grad()
        dense_opt.zero_grad()
        return loss.detach()

    return step


def exactness(
    shape: Shape, device: torch.device, batch: EpisodeBatch, mode: str, variant: str, backend: str
) -> dict[str, Any]:
    """Logits and dense gradients of ``variant`` against fp32 (see the module docstring)."""
    ref_logits, ref_grads = _forward_backward(shape, device, batch, mode, "fp32", None)
    compiled = variant == "compile"
    logits, grads = _forward_backward(
        shape, device, batch, mode, "fp32" if compiled else variant, backend if compiled else None
    )
    out: dict[str, Any] = {}
    for name, x, ref in (("logits", logits, ref_logits), ("grads", grads, ref_grads)):
        diff = x - ref
        out[f"{name}_max_abs_diff"] = float(diff.abs().max())
        out[f"{name}_rel_err"] = float(diff.norm() / ref.norm().clamp_min(1e-30))
    out["tolerance_rel"] = TOLERANCE[variant]
    out["exact_enough"] = bool(
        max(out["logits_rel_err"], out["grads_rel_err"]) <= TOLERANCE[variant]
        and torch.isfinite(logits).all()
        and torch.isfinite(grads).all()
    )
    return out


def _forward_backward(
    shape: Shape,
    device: torch.device,
    batch: EpisodeBatch,
    mode: str,
    prec: str,
    backend: str | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of all samples at the initial parameters, and the first step's dense gradients."""
    model, meta = build(shape, device), meta_config(mode)
    loss_fn, forward = outer_loss, model
    if backend is not None:
        loss_fn = torch.compile(outer_loss, backend=backend)
        forward = torch.compile(model, backend=backend)
    with matmul_mode(prec, device):
        with autocast(prec, device):
            sparse = model.embeddings.lookup(batch)
            loss, _ = loss_fn(model, sparse, batch, meta)
            with torch.no_grad():
                logits = forward(sparse, batch.dense)
        loss.backward()
    grads = torch.cat([p.grad.reshape(-1) for p in model.dense_half.parameters()])
    return logits.float().reshape(-1), grads.float()


def _rounds(fns: dict[str, StepFn], batches: list[EpisodeBatch], timer: Timer, steps: int,
            warmup: int) -> dict[str, list[float]]:  # fmt: skip
    """Warm up every variant, then interleaved rounds (one step of each per round), so that
    drift and noise hit every variant alike; seconds per step per variant."""
    for fn in fns.values():
        timer.run(lambda i, fn=fn: fn(batches[i % len(batches)]), warmup, 0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(steps):
        batch = batches[r % len(batches)]
        for name, fn in fns.items():
            times[name] += timer.run(lambda _, fn=fn, b=batch: fn(b), 0, 1)
    return times


def component_fns(shape: Shape, device: torch.device, batch: EpisodeBatch) -> dict[str, StepFn]:
    """The plain step's two halves alone: the embedding work (lookup, a loss that reads only the
    pooled fields, backward, row-wise Adagrad) and the MLP (forward + backward on fixed pooled
    fields)."""
    emb_model = build(shape, device)
    emb = emb_model.embeddings
    mlp_model = build(shape, device)
    with torch.no_grad():
        fields = mlp_model.embeddings.lookup(batch).pooled().detach().clone()
    y = batch.click.to(device)

    def embedding_only(b: EpisodeBatch) -> torch.Tensor:
        loss = emb.lookup(b).pooled().sum()
        loss.backward()
        emb.apply_gradients(OPTIM.sparse_lr)
        return loss.detach()

    def mlp_only(b: EpisodeBatch) -> torch.Tensor:
        logits = mlp_model(SparseOut(fields=fields), b.dense)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        loss.backward()
        for p in mlp_model.parameters():
            p.grad = None
        return loss.detach()

    return {"embedding_only": embedding_only, "mlp_only": mlp_only}


def run_steps(
    shape: Shape,
    device: torch.device,
    batches: list[EpisodeBatch],
    timer: Timer,
    budget: Budget,
    *,
    modes: tuple[str, ...],
    steps: int,
    warmup: int,
    ceilings: dict[str, Any],
) -> dict[str, Any]:
    """Part 1: throughput of every mode x precision, the baseline, the halves, exactness."""
    precisions = ("fp32", "tf32", "bf16") if device.type == "cuda" else ("fp32", "bf16")
    fns: dict[str, StepFn] = {"torch_embeddingbag_sparse_adam": embedding_bag_fn(shape, device)}
    for mode, prec in itertools.product(modes, precisions):
        fns[f"{mode}.{prec}"] = step_fn(shape, device, mode, prec)
    fns.update(component_fns(shape, device, batches[0]))
    times = _rounds(fns, batches, timer, steps, warmup)
    unique = int(sum(b.ids.numel() for b in batches) / len(batches))
    variants = {}
    for name, ts in times.items():
        res = summarize(ts, shape.samples)
        seconds = res["median_step_ms"] / 1e3
        prec = name.rsplit(".", 1)[-1] if "." in name else "fp32"
        if name != "embedding_only":
            tflops = model_flops(shape) / seconds / 1e12
            res |= _rate("model_tflops", tflops, ceilings.get(f"matmul_{prec}_tflops"), "matmul")
        if name != "mlp_only":
            gbps = embedding_bytes(shape, unique, shape.dim + 1) / seconds / 1e9
            res |= _rate("embedding_gbps", gbps, ceilings.get("device_copy_gbps"), "copy")
        variants[name] = res
    exact = {}
    for mode, prec in itertools.product(modes, precisions[1:]):
        if not budget.allows(10):
            exact[f"{mode}.{prec}"] = {"status": budget.skip_reason(10)}
            continue
        exact[f"{mode}.{prec}"] = exactness(shape, device, batches[0], mode, prec, "")
    profiled = {}
    for name in ("plain.fp32", "fomaml.fp32"):
        if name in fns and budget.allows(15):
            profiled[name] = profile_step(fns[name], batches, device)
    return {
        "status": "ok",
        "profile": profiled,
        "unique_rows_per_step": unique,
        "model_flops_per_step": model_flops(shape),
        "embedding_bytes_per_step": embedding_bytes(shape, unique, shape.dim + 1),
        "variants": variants,
        "exactness_vs_fp32": exact,
    }


SYNC_EVENTS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::unique",
               "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync",
               "cudaMemcpy")  # fmt: skip
"""Profiler events that are (or usually imply) a host<->device round trip."""


def profile_step(fn: StepFn, batches: list[EpisodeBatch], device: torch.device, steps: int = 3
                 ) -> dict[str, Any]:  # fmt: skip
    """Where one step's time goes (``torch.profiler`` over ``steps`` steps): the top operators
    and kernels by self time, kernel launches and round-trip events per step."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn(batches[0])
    with profile(activities=acts) as prof:
        for i in range(steps):
            fn(batches[i % len(batches)])
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    ranked = sorted(events, key=lambda e: getattr(e, attr, 0), reverse=True)[:15]
    return {
        "by": "self device time" if cuda else "self CPU time",
        "top": [
            {
                "name": e.key[:120],
                "calls_per_step": e.count / steps,
                "self_ms_per_step": round(getattr(e, attr, 0) / 1e3 / steps, 3),
            }
            for e in ranked
        ],
        "kernel_launches_per_step": sum(e.count for e in events if "LaunchKernel" in e.key) / steps,
        "round_trips_per_step": {e.key: e.count / steps for e in events if e.key in SYNC_EVENTS},
    }


def _rate(name: str, value: float, ceiling: float | None, ceiling_name: str) -> dict[str, Any]:
    """``{name: value}``, and its fraction of the measured ceiling where there is one."""
    out: dict[str, Any] = {name: round(value, 6)}
    if ceiling:
        out[f"{name}_fraction_of_{ceiling_name}_ceiling"] = round(value / ceiling, 6)
    return out


def run_compile(
    shape: Shape,
    device: torch.device,
    batches: list[EpisodeBatch],
    timer: Timer,
    budget: Budget,
    *,
    modes: tuple[str, ...],
    steps: int,
    warmup: int,
    backend: str,
    need_s: float,
) -> dict[str, Any]:
    """Part 5: ``torch.compile(outer_loss)`` per mode: exactness and throughput against the fp32
    step timed in the same rounds, and what Dynamo made of it (graphs, graph breaks: a break
    leaves that frame eager); a mode that fails records the reason."""
    out: dict[str, Any] = {"status": "ok", "backend": backend, "modes": {}}
    for mode in modes:
        if not budget.allows(need_s):
            out["modes"][mode] = {"status": budget.skip_reason(need_s)}
            continue
        try:
            torch._dynamo.reset()  # each mode compiles from scratch; its own counters
            exact = exactness(shape, device, batches[0], mode, "compile", backend)
            compiled = torch.compile(outer_loss, backend=backend)
            fns = {
                "fp32": step_fn(shape, device, mode, "fp32"),
                "compile": step_fn(shape, device, mode, "fp32", compiled),
            }
            times = _rounds(fns, batches, timer, steps, warmup)
            res = {k: summarize(v, shape.samples) for k, v in times.items()}
            ratio = res["compile"]["samples_per_s"] / res["fp32"]["samples_per_s"]
            out["modes"][mode] = {
                "status": "ok",
                "exactness_vs_fp32": exact,
                **res,
                "compile_vs_fp32": round(ratio, 3),
                "dynamo": _dynamo_counters(),
            }
        except Exception as e:  # one mode's failure is a finding, not the end of the part
            out["modes"][mode] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
    return out


def _dynamo_counters() -> dict[str, Any]:
    """Graphs Dynamo captured and its graph breaks since the last reset (private counters: an
    error string where this torch has none)."""
    try:
        from torch._dynamo.utils import counters

        breaks = counters["graph_break"]
        reasons = sorted({r.strip().splitlines()[0][:200] for r in breaks})
        return {
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(breaks.values())),
            "graph_break_reasons": reasons[:5],
        }
    except Exception as e:  # private API: its absence must not fail the part
        return {"error": f"{type(e).__name__}: {e}"[:300]}
