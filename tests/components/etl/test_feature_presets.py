"""Feature-spec presets: ``--feature-preset small`` picks tables sized to MovieLens-size data, and
the trainer's checkpoint follows the tables' rows (a few MB, against ~85 MB for the default)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.etl.config import FEATURE_PRESETS, EtlConfig, FeatureConfig

INTERVAL = dict(input="/r", output="/o", start="2026-11-01T00", end="2026-11-01T01")
DIM = 16


def test_a_preset_sets_the_feature_spec_and_a_spec_file_excludes_it() -> None:
    small = EtlConfig(**INTERVAL, feature_preset="small")
    assert (small.features, small.dense_features) == FEATURE_PRESETS["small"]
    assert [f.name for f in small.features] == [f.name for f in EtlConfig(**INTERVAL).features]
    assert small.sparse_width == EtlConfig(**INTERVAL).sparse_width
    assert small.describe()["feature_preset"] == "small"
    with pytest.raises(ValueError, match="give one or the other"):
        EtlConfig(**INTERVAL, feature_preset="small", features=(FeatureConfig("user_id", 11),))
    with pytest.raises(ValueError, match="--feature-preset must be one of default, small"):
        EtlConfig(**INTERVAL, feature_preset="tiny")


def test_the_preset_reaches_the_etl_job_as_an_option() -> None:
    import argparse

    from components.etl import command
    from components.steps.data import etl_arguments

    config = EtlConfig(**INTERVAL, feature_preset="small")
    assert "feature_preset='small'" in " ".join(etl_arguments(config)).replace('"', "'")
    parser = argparse.ArgumentParser()
    command.configure_parser(parser)
    argv = ["--input", "/r", "--output", "/o", "--start", "2026-11-01T00", "--end",
            "2026-11-01T01", "--feature-preset", "small"]  # fmt: skip
    assert command.config_from_args(parser.parse_intermixed_args(argv)) == config


def _rows(preset: str) -> int:
    return sum(f.buckets for f in FEATURE_PRESETS[preset][0])


def _checkpoint_bytes(preset: str, root: Path) -> int:
    """Train one step on synthetic episodes with ``preset``'s tables; the checkpoint's bytes."""
    from tests.trainer.run_helpers import tiny_config
    from trainer.data.synthetic import write_synthetic_episodes
    from trainer.trainer import Trainer

    features, dense = FEATURE_PRESETS[preset]
    write_synthetic_episodes(
        root / "data",
        num_tasks=20,
        k_support=4,
        q_query=4,
        features=[(f.name, f.buckets, f.slots) for f in features],
        dense_width=len(dense),
        max_episodes_per_task=4,
        rows_per_group=16,
    )
    overrides = {"train.steps": 1, "model.embedding_dim": DIM, "eval.max_episodes": 8}
    trainer = Trainer(tiny_config(root / "data", root / "run", **overrides)).build()
    try:
        trainer.fit()
    finally:
        trainer.close()
    (step,) = (root / "run" / "checkpoints").glob("step-*")
    return sum(p.stat().st_size for p in step.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    "preset", ["small", pytest.param("default", marks=pytest.mark.slow)]
)  # the default writes ~90 MB
def test_checkpoint_size_follows_the_preset_tables(preset: str, tmp_path: Path) -> None:
    size = _checkpoint_bytes(preset, tmp_path)
    # Every table row: DIM float32 weights and one float32 of row-wise Adagrad state.
    tables = _rows(preset) * (DIM + 1) * 4
    assert tables <= size <= tables * 1.05 + (1 << 20), (size, tables)
    if preset == "small":
        assert size < 5_000_000
        assert _rows("default") * (DIM + 1) * 4 > 80_000_000  # what the default writes
