"""The per-request output file (Parquet or CSV), streamed in row groups so memory stays bounded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from aif_sim.atomic import temp_beside
from aif_sim.core.sampling import sampled
from aif_sim.metrics.recorder import CompletedBlock


class RequestLog:
    """Rows of completed measured requests: id, pipeline, arrival, user, candidates, latency, per-stage
    times and, per cache lookup of the scenario's pipelines (`Pipeline.lookup_labels`: a cache's name, or
    `CACHE@STAGE` for a cache a pipeline consults at several calls), whether the request hit there."""

    ROW_GROUP = 65536

    def __init__(self, path: Path, stages: list[str], caches: list[str], fmt: str = "parquet", sample: float = 1.0) -> None:
        self.path, self.stages, self.caches, self.fmt, self.sample = path, stages, caches, fmt, sample
        fields = [
            pa.field("request_id", pa.int64()),
            pa.field("pipeline", pa.string()),
            pa.field("arrival_s", pa.float64()),
            pa.field("user", pa.int64()),
            pa.field("candidates", pa.int64()),
            pa.field("latency_ms", pa.float64()),
        ]
        fields += [pa.field(f"{s}_ms", pa.float64()) for s in stages]
        self._schema = pa.schema(fields + [pa.field(f"{c}_hit", pa.bool_()) for c in caches])
        self._pending: list[pa.Table] = []
        self._rows = 0
        self._tmp = temp_beside(path)
        self._writer = (pq.ParquetWriter if fmt == "parquet" else pacsv.CSVWriter)(self._tmp, self._schema)

    def write(self, pipeline: str, stages: list[str], caches: list[str], block: CompletedBlock) -> None:
        keep = sampled(block.request_id, self.sample)
        n = int(np.count_nonzero(keep))
        if n == 0:
            return
        columns = [block.request_id[keep], pa.array([pipeline] * n), block.arrival_s[keep], block.user[keep], block.candidates[keep]]
        columns.append(block.latency_ms[keep])
        nan = np.full(n, np.nan)
        columns += [block.stage_ms[keep, stages.index(s)] if s in stages else nan for s in self.stages]
        for cache in self.caches:  # null where the request did not make the lookup
            flags = block.cache_hit[keep, caches.index(cache)] if cache in caches else nan
            columns.append(pa.array(flags == 1.0, mask=np.isnan(flags)))
        self._pending.append(pa.Table.from_arrays(columns, schema=self._schema))
        self._rows += n
        if self._rows >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending))
            self._pending, self._rows = [], 0

    def close(self) -> None:
        """Write what is buffered and move the file into place."""
        self._flush()
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        """Drop the partial file; an earlier file at the path stays as it was."""
        self._writer.close()
        self._tmp.unlink(missing_ok=True)
