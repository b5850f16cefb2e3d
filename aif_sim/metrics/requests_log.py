"""The per-request output file (Parquet or CSV), streamed in row groups so memory stays bounded."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from aif_sim.atomic import temp_beside

_GOLDEN = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


def sampled(request_id: int, fraction: float) -> bool:
    """Deterministic per-request sampling: the same requests are kept in every pipeline."""
    return ((request_id * _GOLDEN) & _MASK) < fraction * (1 << 64)


class RequestLog:
    """Rows of completed measured requests: id, pipeline, arrival, user, candidates, latency and per-stage times."""

    ROW_GROUP = 65536

    def __init__(self, path: Path, stages: list[str], fmt: str = "parquet", sample: float = 1.0) -> None:
        self.path, self.stages, self.fmt, self.sample = path, stages, fmt, sample
        self.columns = ["request_id", "pipeline", "arrival_s", "user", "candidates", "latency_ms"] + [f"{s}_ms" for s in stages]
        self._rows: list[tuple] = []
        self._slots: dict[str, list[int | None]] = {}
        self._tmp = temp_beside(path)
        if fmt == "parquet":
            fields = [pa.field("request_id", pa.int64()), pa.field("pipeline", pa.string()), pa.field("arrival_s", pa.float64())]
            fields += [pa.field("user", pa.int64()), pa.field("candidates", pa.int64())]
            fields += [pa.field(name, pa.float64()) for name in self.columns[5:]]
            self._schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        else:
            self._handle = open(self._tmp, "w", newline="")
            self._csv = csv.writer(self._handle)
            self._csv.writerow(self.columns)

    def add(self, pipeline: str, request: Any, latency_ms: float, stages: list[str]) -> None:
        if self.sample < 1.0 and not sampled(request.id, self.sample):
            return
        slots = self._slots.get(pipeline)
        if slots is None:  # where each output column sits in this pipeline's stage times
            slots = self._slots[pipeline] = [stages.index(s) if s in stages else None for s in self.stages]
        times = request.stage_ms
        self._rows.append(
            (
                request.id,
                pipeline,
                request.arrival_s,
                request.user,
                request.candidates,
                latency_ms,
                *(math.nan if i is None else times[i] for i in slots),
            )
        )
        if len(self._rows) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self.fmt == "parquet":
            columns = list(zip(*self._rows))
            self._parquet.write_table(pa.table(dict(zip(self.columns, columns)), schema=self._schema))
        else:
            self._csv.writerows(self._rows)
        self._rows.clear()

    def _close_writer(self) -> None:
        if self.fmt == "parquet":
            self._parquet.close()
        else:
            self._handle.close()

    def close(self) -> None:
        """Write what is buffered and move the file into place."""
        self._flush()
        self._close_writer()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file; an earlier file at the path stays as it was."""
        self._close_writer()
        self._tmp.unlink(missing_ok=True)
