"""Task-conditioned dense layers (FiLM, Perez et al. 2018; the TaNP / MAMO family of recommenders):
a support-set encoder produces, per task, a scale and a shift for the outputs of the model's main
layers, so adaptation to a task is one forward pass (cheap to serve) instead of gradient steps.

    encoder = TaskEncoder(in_features, hidden, {"deep.first": 32, "deep.over_arch.layers.0": 16})
    film = encoder(x_support, y_support, mask)      # {layer: (gamma (T, H), beta (T, H))}
    with modulated(model.dense_half, film):          # hooks for the block only
        logits = model.dense_half(query_sparse, query_dense)

The encoder embeds every support sample (its concatenated field embeddings, dense features and
label) with a one-hidden-layer MLP, averages over the real support samples of the task (an empty
support set averages to zero), and maps the average to ``gamma`` and ``beta`` for every modulated
layer; the layer's output ``y`` becomes ``y * (1 + gamma) + beta``. The last map starts at zero, so
an untrained encoder leaves the model as it is. The encoder is a submodule of the model
(``RecModel.task_encoder``): trained by the outer loss with the dense layers, saved in checkpoints,
all-reduced like them. Model code never sees it: the modulation is a forward hook on the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Modulation = dict[str, tuple[Tensor, Tensor]]
"""Per modulated layer name: ``gamma`` and ``beta``, ``(T, H)`` (or ``(H,)`` per episode)."""


class TaskEncoder(nn.Module):
    """Support set -> FiLM parameters of every modulated layer (see the module docstring).

    Args:
        in_features: width of a support sample's description (fields x dim + dense width + 1).
        hidden: width of the per-sample embedding.
        layers: modulated layer name (module in ``dense_half``) -> its output width.
    """

    def __init__(self, in_features: int, hidden: int, layers: Mapping[str, int]) -> None:
        super().__init__()
        self.layers = dict(layers)
        self.embed = nn.Linear(in_features, hidden)
        self.to_film = nn.Linear(hidden, 2 * sum(self.layers.values()))
        nn.init.zeros_(self.to_film.weight)
        nn.init.zeros_(self.to_film.bias)

    def forward(self, x: Tensor, mask: Tensor) -> Modulation:
        """``x`` ``(T, K, in_features)`` support samples, ``mask`` ``(T, K)`` (float) the real
        ones -> ``{layer: (gamma, beta)}``, each ``(T, H)``."""
        h = F.relu(self.embed(x))
        pooled = (h * mask.unsqueeze(-1)).sum(-2) / mask.sum(-1, keepdim=True).clamp_min(1.0)
        out = self.to_film(pooled)
        film: Modulation = {}
        start = 0
        for name, width in self.layers.items():
            gamma = out[..., start : start + width]
            beta = out[..., start + width : start + 2 * width]
            film[name] = (gamma, beta)
            start += 2 * width
        return film


def support_features(fields: Tensor, dense: Tensor, y: Tensor) -> Tensor:
    """One row per sample: the concatenated field embeddings ``(..., F, D)``, the dense features
    ``(..., Dn)`` and the label ``(...)``."""
    return torch.cat([fields.flatten(-2), dense, y.unsqueeze(-1)], -1)


@contextmanager
def modulated(module: nn.Module, film: Modulation) -> Iterator[None]:
    """Within the block, every layer named in ``film`` (a submodule of ``module``) outputs
    ``y * (1 + gamma) + beta``, ``gamma``/``beta`` broadcast over the samples of each episode."""
    handles = [
        module.get_submodule(name).register_forward_hook(_hook(gamma, beta))
        for name, (gamma, beta) in film.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _hook(gamma: Tensor, beta: Tensor) -> Callable[[nn.Module, tuple, Tensor], Tensor]:
    def hook(module: nn.Module, args: tuple, y: Tensor) -> Tensor:
        return y * (1.0 + gamma.unsqueeze(-2)) + beta.unsqueeze(-2)

    return hook
