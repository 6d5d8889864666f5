"""``journal export``: every table of the journal to files, CSV always, Parquet through pyarrow."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from sqlalchemy import select

from .schema import TABLES


def export(engine: Any, directory: str, *, fmt: str = "csv", since_ms: int | None = None,
           symbols: list[str] | None = None, fleet: str | None = None) -> dict[str, dict[str, Any]]:
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for name, table in TABLES.items():
            q = select(table).order_by(table.c.id)
            if since_ms is not None:
                q = q.where(table.c.ts_ms >= since_ms)
            if symbols:
                q = q.where(table.c.symbol.in_(symbols))
            if fleet:
                q = q.where(table.c.fleet == fleet)
            result = conn.execute(q)
            cols = list(result.keys())
            rows = [tuple(r) for r in result]
            path = out_dir / f"{name}.{fmt}"
            if fmt == "csv":
                with open(path, "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f)
                    w.writerow(cols)
                    w.writerows(rows)
            elif fmt == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
                schema = pa.schema([(c.name, _arrow_type(c.type)) for c in table.columns])
                pq.write_table(pa.table(data, schema=schema), path)
            else:
                raise ValueError(f"format {fmt!r}: csv or parquet")
            written[name] = {"path": str(path), "rows": len(rows)}
    return written


def _arrow_type(t: Any) -> Any:
    import pyarrow as pa
    from sqlalchemy import BigInteger, Boolean, Float, Integer

    if isinstance(t, (BigInteger, Integer)):
        return pa.int64()
    if isinstance(t, Float):
        return pa.float64()
    if isinstance(t, Boolean):
        return pa.bool_()
    return pa.string()  # exchange decimals stay exact as text
