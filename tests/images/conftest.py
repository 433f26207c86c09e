"""One environment per image, built once per test session in a fresh temp directory and removed
after the session (nothing is cached across runs): see :mod:`tests.images.image_env`."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.images.image_env import ImageEnv, build


def _image(name: str, factory: pytest.TempPathFactory) -> Iterator[ImageEnv]:
    work = factory.mktemp(f"image-{name}")
    yield build(name, work)
    shutil.rmtree(work, ignore_errors=True)  # over 1 GB each (torch, pyspark)


@pytest.fixture(scope="session")
def trainer_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageEnv]:
    yield from _image("trainer", tmp_path_factory)


@pytest.fixture(scope="session")
def components_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageEnv]:
    yield from _image("components", tmp_path_factory)


@pytest.fixture(scope="session")
def serve_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageEnv]:
    yield from _image("serve", tmp_path_factory)


@pytest.fixture(scope="session")
def images(trainer_image: ImageEnv, components_image: ImageEnv) -> dict[str, ImageEnv]:
    """Image reference (as the compiled pipeline names it) -> its environment."""
    from pipelines.ops import COMPONENTS_IMAGE, TRAINER_IMAGE

    return {TRAINER_IMAGE: trainer_image, COMPONENTS_IMAGE: components_image}
