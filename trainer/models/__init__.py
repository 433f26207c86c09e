"""The model zoo: DLRM, DeepFM, Wide&Deep and a MeLU-style model, each split into a sparse half
(pooling) and a functional dense half (see ``build.py``). Free of ``torch.distributed``."""

from trainer.models.build import ARCHS, ModelConfig, RecModel, build_embeddings, build_model
from trainer.models.common import SparseFeatures

__all__ = ["ARCHS", "ModelConfig", "RecModel", "SparseFeatures", "build_embeddings", "build_model"]
