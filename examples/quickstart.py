"""The README's quickstart: clean a stream of readings, flag hot ones, keep what failed."""

import polars as pl

import tideflow as tdf

readings = [
    {"host": "gpu-1", "ts": 1_700_000_000_000 + i * 1_000, "temp_c": 60 + (i % 7) * 4, "watts": "310"}
    for i in range(1_000)
] + [{"host": "gpu-2", "ts": 1_700_000_999_000, "temp_c": 91, "watts": "n/a"}]

flow = tdf.Flow("gpu-heat")
stream = flow.source("readings", tdf.io.MemorySource(readings, time="ts"))
hot = (
    stream.with_columns("parse-watts", watts=pl.col("watts").cast(pl.Float64, strict=True))
    .filter("hot", pl.col("temp_c") >= 80)
    .map("label", lambda r: {**r, "level": "critical" if r["temp_c"] >= 84 else "warning"})
)
alerts = tdf.io.MemorySink()
hot.sink("alerts", alerts)
flow.dead_letters().sink("dead-letters", tdf.io.StdoutSink(format="jsonl"))

if __name__ == "__main__":
    result = flow.run()
    print(f"{len(alerts)} alerts, {result.dead_letters} dead letter(s), {result.records_in} readings in")
