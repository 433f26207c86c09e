"""The Arrow schema of an episode file, and its check (torch-free: stdlib + pyarrow).

`contract.py` names the columns; this module pins their Arrow types so that the writer side
(the Spark ETL, :mod:`trainer.data.synthetic`) and the reader side agree on one definition:

    task_key        string
    task_id         int64
    episode         int32
    n_support       int32
    n_query         int32
    sparse          list<int64>     (K + Q) * sparse_width ids
    dense           list<float32>   (K + Q) * dense_width values
    click           list<int8>      K + Q
    conversion      list<int8>      K + Q   (-1 = unknown)
    event_time_ms   list<int64>     K + Q

Readers accept ``list``, ``large_list`` and ``fixed_size_list`` for the list columns and any
integer width for the scalar integer columns (Spark may widen them); element types are exact.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainer.data.contract import (
    COL_CLICK,
    COL_CONVERSION,
    COL_DENSE,
    COL_EPISODE,
    COL_EVENT_TIME,
    COL_N_QUERY,
    COL_N_SUPPORT,
    COL_SPARSE,
    COL_TASK_ID,
    COL_TASK_KEY,
    ContractError,
)

if TYPE_CHECKING:
    import pyarrow as pa

LIST_ELEMENT = {
    COL_SPARSE: "int64",
    COL_DENSE: "float",  # pyarrow's name for float32
    COL_CLICK: "int8",
    COL_CONVERSION: "int8",
    COL_EVENT_TIME: "int64",
}
"""List columns and the exact Arrow type of their elements."""

INTEGER_SCALARS = (COL_TASK_ID, COL_EPISODE, COL_N_SUPPORT, COL_N_QUERY)
"""Scalar columns that must hold integers."""


def episode_schema() -> pa.Schema:
    """The Arrow schema writers should produce (column order as ``contract.EPISODE_COLUMNS``)."""
    import pyarrow as pa

    return pa.schema(
        [
            (COL_TASK_KEY, pa.string()),
            (COL_TASK_ID, pa.int64()),
            (COL_EPISODE, pa.int32()),
            (COL_N_SUPPORT, pa.int32()),
            (COL_N_QUERY, pa.int32()),
            (COL_SPARSE, pa.list_(pa.int64())),
            (COL_DENSE, pa.list_(pa.float32())),
            (COL_CLICK, pa.list_(pa.int8())),
            (COL_CONVERSION, pa.list_(pa.int8())),
            (COL_EVENT_TIME, pa.list_(pa.int64())),
        ]
    )


def check_episode_schema(
    schema: pa.Schema, columns: list[str] | tuple[str, ...], where: str
) -> None:
    """Raise ContractError unless ``schema`` has ``columns`` with the contract's types.

    Args:
        schema: the Arrow schema of one file (``ParquetFile.schema_arrow``).
        columns: the columns the caller needs (a reader projects a subset).
        where: the file name, for the message.
    """
    import pyarrow.types as pat

    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise ContractError(
            f"{where}: missing episode column(s) {', '.join(missing)} (has: {', '.join(schema.names)}); "
            "the file was not written by this metarec version's ETL: rerun `metarec etl`"
        )
    for name in columns:
        typ = schema.field(name).type
        if name in LIST_ELEMENT:
            ok = (
                pat.is_list(typ) or pat.is_large_list(typ) or pat.is_fixed_size_list(typ)
            ) and str(typ.value_type) == LIST_ELEMENT[name]
            expected = f"list<{LIST_ELEMENT[name]}>"
        elif name in INTEGER_SCALARS:
            ok, expected = pat.is_integer(typ), "an integer"
        else:
            ok, expected = pat.is_string(typ) or pat.is_large_string(typ), "string"
        if not ok:
            raise ContractError(
                f"{where}: column {name!r} has type {typ}, the episode contract requires {expected}; "
                "rerun `metarec etl` with a matching metarec version"
            )
