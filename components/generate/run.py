"""``generate(config)``: the streaming loop, hour by hour and chunk by chunk, and ``_generation.json``.

Per chunk: sample impressions (``traffic``), draw labels (``labels``), plan corruption and fill
duplicates (``corruption``), render (``render``), append to the hour's files (``writer``). Random
streams are keyed by ``(seed, purpose, hour, chunk)``, and corruption draws from its own stream, so
a corrupted run has the same clean rows as a clean run except where rows were replaced.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from components.generate.config import GenerationSummary, GeneratorConfig
from components.generate.corruption import CLEAN, COUNTING_RULES, DUPLICATES, Corruptor
from components.generate.labels import calibrate, draw_labels
from components.generate.population import Population, build_population, rng_for
from components.generate.render import Renderer
from components.generate.traffic import (
    Events,
    chunk_slices,
    event_keys,
    rows_per_hour,
    sample_impressions,
)
from components.generate.writer import (
    CAMPAIGNS_FILE,
    GENERATION_FILE,
    PartitionFiles,
    WriteBehind,
    prepare_output,
    resolve,
)
from components.raw_schema import SCHEMA_VERSION, arrow_schema

log = logging.getLogger("metarec.generate")

GENERATOR_VERSION = 1
CALIBRATION_ROWS = 100_000
PROGRESS_EVERY_S = 5.0
ROW_DEFINITION = (
    "one record as a reader sees it: one line of a JSONL file (every line ends with a newline "
    "except a truncated last line, which still counts as one row; no blank lines are written), "
    "or one row of a Parquet file"
)


def generate(config: GeneratorConfig) -> GenerationSummary:
    """Write ``config.rows`` rows of synthetic ad logs under ``config.out``; see the package doc."""
    began = time.perf_counter()
    fs, root = resolve(config.out)
    prepare_output(fs, root, config.out, config.overwrite)
    pop = build_population(config)
    rng = rng_for(config.seed, 2)
    sample = sample_impressions(pop, rng, CALIBRATION_ROWS, config.start_ms, config.end_ms, False)
    model = calibrate(pop, config.ctr, config.cvr, *sample)
    log.info(
        "population: %d users, %d campaigns (%d cold-start), %d ads, %d advertisers; "
        "click bias %.3f, conversion bias %.3f",
        pop.num_users,
        pop.num_campaigns,
        int(pop.camp_cold.sum()),
        pop.num_ads,
        pop.num_advertisers,
        model.click_bias,
        model.conversion_bias,
    )
    renderer = Renderer(pop)
    corruptor = Corruptor(config) if config.active_corruption_kinds() else None
    schema = arrow_schema()
    if "null_required" in config.active_corruption_kinds():  # nulls need nullable columns
        schema = pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)

    per_hour = rows_per_hour(config)
    stats = _Stats(pop.num_campaigns)
    partitions, files = [], []
    counter, last_log = 0, time.perf_counter()
    behind = WriteBehind()
    try:
        for h, hour_rows in enumerate(per_hour):
            hour_ms = config.start_ms + h * 3_600_000
            part = PartitionFiles(
                fs, root, hour_ms, config.format, config.files_per_hour, schema, behind
            )
            slices = chunk_slices(int(hour_rows), hour_ms, config.chunk_rows)
            for j, (n, t0, t1) in enumerate(slices):
                if n == 0:
                    continue
                rng, crng = rng_for(config.seed, 3, h, j), rng_for(config.seed, 4, h, j)
                user, ad, scene, bid, time_ms = sample_impressions(pop, rng, n, t0, t1)
                labels = draw_labels(model, pop, rng, user, ad, scene, bid, time_ms)
                keys = event_keys(counter, n, config.seed)
                ev = Events(keys, time_ms, user, ad, scene, bid, *labels)
                counter += n
                file_of = rng.integers(config.files_per_hour, size=n)
                plan, used = np.full(n, CLEAN, dtype=np.int8), np.zeros(0, dtype=np.int64)
                if corruptor is not None:
                    plan = corruptor.plan(crng, file_of, last_chunk=j == len(slices) - 1)
                    ev, used = corruptor.duplicate(crng, pop, ev, plan, t0, t1)
                bad = np.flatnonzero((plan != CLEAN) & ~np.isin(plan, DUPLICATES))
                if config.format == "parquet":
                    table = _typed_chunk(renderer, corruptor, crng, ev, schema, plan, bad)
                    part.write_table(table, file_of)
                else:
                    part.write_lines(_json_chunk(renderer, corruptor, crng, ev, plan, bad), file_of)
                if corruptor is not None:
                    corruptor.remember(crng, ev, plan, used)
                stats.add(pop, ev, plan == CLEAN)
                if time.perf_counter() - last_log >= PROGRESS_EVERY_S:
                    last_log = time.perf_counter()
                    _progress(counter, config.rows, began, part.partition)
            written = part.close()
            partitions.append(
                {"partition": part.partition, "rows": int(hour_rows), "files": written}
            )
            files += [f["path"] for f in written]
    finally:
        behind.close()
    _progress(counter, config.rows, began, "done")

    _write_campaigns(fs, root, pop, stats.campaign_rows)
    summary = GenerationSummary(
        out=config.out,
        rows_written=int(per_hour.sum()),
        rows_per_hour=tuple(map(int, per_hour)),
        files=tuple(files),
        corruption=_kinds(corruptor),
        expected_reasons=_reasons(corruptor),
        max_chunk_rows=stats.max_chunk,
        chunks=stats.chunks,
        clean_rows=stats.clean_rows,
        clicks=stats.clicks,
        seconds=time.perf_counter() - began,
    )
    _write_generation(fs, root, config, summary, partitions, stats, pop, model)
    log.info(
        "wrote %d rows in %d files to %s in %.1f s (%.0f rows/s); CTR %.4f; corrupted %d rows",
        summary.rows_written,
        len(files),
        config.out,
        summary.seconds,
        summary.rows_per_second,
        summary.ctr,
        sum(summary.corruption.values()),
    )
    return summary


class _Stats:
    """Label and task-size counts over the clean rows (corrupted and duplicate rows excluded)."""

    def __init__(self, num_campaigns: int) -> None:
        self.chunks = self.max_chunk = self.clean_rows = self.clicks = 0
        self.tracked_clicks = self.conversions = 0
        self.campaign_rows = np.zeros(num_campaigns, dtype=np.int64)

    def add(self, pop: Population, ev: Events, ok: np.ndarray) -> None:
        self.chunks += 1
        self.max_chunk = max(self.max_chunk, len(ev))
        self.clean_rows += int(ok.sum())
        self.clicks += int(ev.click[ok].sum())
        tracked = ok & ev.conversion_known
        self.tracked_clicks += int(ev.click[tracked].sum())
        self.conversions += int(ev.conversion[tracked].sum())
        self.campaign_rows += np.bincount(
            pop.ad_campaign[ev.ad[ok]], minlength=len(self.campaign_rows)
        )

    def labels(self) -> dict:
        return {
            "clean_rows": self.clean_rows,
            "clicks": self.clicks,
            "ctr": _ratio(self.clicks, self.clean_rows),
            "tracked_clicks": self.tracked_clicks,
            "conversions": self.conversions,
            "cvr_given_click": _ratio(self.conversions, self.tracked_clicks),
        }


def _json_chunk(renderer, corruptor, rng, ev: Events, plan: np.ndarray, bad: np.ndarray):
    lines = renderer.json_lines(ev)
    if len(bad):
        records = renderer.table(ev.take(bad)).to_pylist()
        new = corruptor.corrupt(rng, records, plan[bad], as_json=True)
        mask = np.zeros(len(ev), dtype=bool)
        mask[bad] = True
        lines = pc.replace_with_mask(lines, pa.array(mask), pa.array(new, pa.string()))
    return lines


def _typed_chunk(renderer, corruptor, rng, ev: Events, schema, plan: np.ndarray, bad: np.ndarray):
    table = renderer.table(ev, schema)
    if len(bad):
        records = corruptor.corrupt(rng, table.take(bad).to_pylist(), plan[bad], as_json=False)
        fixed = pa.Table.from_pylist(records, schema=schema)
        index = np.arange(len(ev))
        index[bad] = len(ev) + np.arange(len(bad))
        table = pa.concat_tables([table, fixed]).take(pa.array(index))
    return table


def _progress(done: int, total: int, began: float, where: str) -> None:
    elapsed = time.perf_counter() - began
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    log.info(
        "%s: %d/%d rows (%.0f%%), %.0f rows/s, ETA %.0f s",
        where,
        done,
        total,
        100 * done / total,
        rate,
        eta,
    )


def _ratio(a: int, b: int) -> float:
    return round(a / b, 6) if b else 0.0


def _kinds(corruptor: Corruptor | None) -> dict[str, int]:
    if corruptor is None:
        return {}
    from components.generate.config import CORRUPTION_KINDS

    return {k: corruptor.kinds[k] for k in CORRUPTION_KINDS if corruptor.kinds[k]}


def _reasons(corruptor: Corruptor | None) -> dict[str, int]:
    return {} if corruptor is None else dict(sorted(corruptor.reasons.items()))


def _write_campaigns(fs, root: str, pop: Population, campaign_rows: np.ndarray) -> None:
    """``_campaigns.parquet``: the ground truth per campaign (births, shares, biases, row counts)."""
    n = pop.num_campaigns
    table = pa.table(
        {
            "campaign_id": [f"c-{i}" for i in range(n)],
            "advertiser_id": [f"adv-{a}" for a in pop.camp_advertiser],
            "birth_time": pa.array(pop.camp_birth_ms, pa.timestamp("ms", tz="UTC")),
            "cold_start": pop.camp_cold,
            "traffic_share": pop.camp_share,
            "click_bias": pop.camp_bias,
            "num_ads": np.diff(pop.camp_ad_offsets),
            "conversions_tracked": pop.adv_tracks_conversions[pop.camp_advertiser],
            "clean_rows": campaign_rows,
        }
    )
    with fs.open_output_stream(f"{root}/{CAMPAIGNS_FILE}", compression=None) as stream:
        pq.write_table(table, stream, compression="zstd")


def _write_generation(fs, root, config, summary, partitions, stats, pop, model):
    """``_generation.json`` last (its presence marks a complete output); no wall-clock values."""
    corruption = {
        "fraction": config.corrupt,
        "kinds": summary.corruption,
        "reasons": summary.expected_reasons,
        "rows_corrupted": sum(summary.corruption.values()),
        "rows_expected_quarantined": sum(summary.expected_reasons.values()),
        "rows_expected_valid": summary.rows_written - sum(summary.expected_reasons.values()),
        "counting_rules": COUNTING_RULES,
    }
    doc = {
        "format": "metarec.raw_generation",
        "generator_version": GENERATOR_VERSION,
        "schema_version": SCHEMA_VERSION,
        "config": config.to_dict(),
        "seed": config.seed,
        "start": config.start,
        "end": _iso_hour(config.end_ms),
        "file_format": config.format,
        "row_definition": ROW_DEFINITION,
        "rows_written": summary.rows_written,
        "files": len(summary.files),
        "partitions": partitions,
        "corruption": corruption,
        "labels": stats.labels(),
        "population": {
            "users": pop.num_users,
            "campaigns": pop.num_campaigns,
            "cold_start_campaigns": int(pop.camp_cold.sum()),
            "ads": pop.num_ads,
            "advertisers": pop.num_advertisers,
            "campaigns_with_rows": int((stats.campaign_rows > 0).sum()),
            "click_bias": round(model.click_bias, 6),
            "conversion_bias": round(model.conversion_bias, 6),
            "truth_file": CAMPAIGNS_FILE,
        },
        "max_chunk_rows": summary.max_chunk_rows,
    }
    tmp = f"{root}/{GENERATION_FILE}.tmp"
    with fs.open_output_stream(tmp, compression=None) as stream:
        stream.write((json.dumps(doc, indent=2) + "\n").encode())
    fs.move(tmp, f"{root}/{GENERATION_FILE}")


def _iso_hour(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:00:00Z")
