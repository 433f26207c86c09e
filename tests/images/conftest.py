"""One environment per image, built once per test session in a fresh temp directory (nothing is
cached across runs): see :mod:`tests.images.image_env`."""

from __future__ import annotations

import pytest

from tests.images.image_env import ImageEnv, build


@pytest.fixture(scope="session")
def trainer_image(tmp_path_factory: pytest.TempPathFactory) -> ImageEnv:
    return build("trainer", tmp_path_factory.mktemp("image-trainer"))


@pytest.fixture(scope="session")
def components_image(tmp_path_factory: pytest.TempPathFactory) -> ImageEnv:
    return build("components", tmp_path_factory.mktemp("image-components"))


@pytest.fixture(scope="session")
def images(trainer_image: ImageEnv, components_image: ImageEnv) -> dict[str, ImageEnv]:
    """Image reference (as the compiled pipeline names it) -> its environment."""
    from pipelines.ops import COMPONENTS_IMAGE, TRAINER_IMAGE

    return {TRAINER_IMAGE: trainer_image, COMPONENTS_IMAGE: components_image}
