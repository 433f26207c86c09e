"""A block of input rows, the unit the readers yield and the accounting filters."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class Block:
    """A block of rows that passed the reader's checks: string columns plus line numbers."""

    columns: dict[str, pa.Array]
    lines: np.ndarray
    """1-based line number of each row in its file (int64)."""

    @property
    def num_rows(self) -> int:
        return len(self.lines)
