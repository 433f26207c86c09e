"""The model zoo: DLRM, DeepFM, Wide&Deep and a MeLU-style model, each a functional dense half
over the :class:`~trainer.sparse.SparseOut` of an embedding collection (see ``build.py``). Free of
``torch.distributed``."""

from trainer.models.build import ARCHS, ModelConfig, RecModel, build_embeddings, build_model

__all__ = ["ARCHS", "ModelConfig", "RecModel", "build_embeddings", "build_model"]
