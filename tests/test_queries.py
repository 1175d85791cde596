"""scripts/queries.sql: every example query gives the same answer in Spark SQL and in DuckDB over Parquet."""
import math
import re
from pathlib import Path

import duckdb
import pytest
from pyspark.sql import Row

from dser_spark import partitioned, tables

QUERIES = Path(__file__).resolve().parents[1] / "scripts" / "queries.sql"
VALUES = {"dt": "2026-05-02", "prev_dt": "2026-05-01", "user_id": "3"}


def _parse(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """({name: query} in Spark SQL, {name: DuckDB text}) from the file; "setup" holds DuckDB's set-up."""
    duck = {name: "\n".join(line.removeprefix("--").strip() for line in body.splitlines())
            for name, body in re.findall(r"^-- duckdb (\w+) begin\n(.*?)^-- duckdb \1 end", text, re.S | re.M)}
    queries = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, body = block.split("\n", 1)
        queries[name.strip()] = "\n".join(line for line in body.splitlines() if not line.startswith("--")).strip()
    return queries, duck


def _statements(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


def _fill(sql: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], sql)


def _plain(value):
    """Comparable form of a cell: Rows / dicts / lists as tuples, floats rounded."""
    if isinstance(value, Row):
        value = value.asDict()
    if isinstance(value, dict):
        return tuple(_plain(v) for v in value.values())
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return tuple(_plain(v) for v in (value.tolist() if hasattr(value, "tolist") else value))
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 5)
    return value


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """items with genres and two nights of recommendations, published and registered."""
    from dser_spark.config import load_config

    root = tmp_path_factory.mktemp("queries") / "warehouse"
    cfg = load_config(None, [f"warehouse.root={root}"])
    items = [(i, f"Film {i}", [["Drama"], ["Comedy", "Drama"], ["Horror"], []][i % 4]) for i in range(1, 21)]
    tables.write_table(spark, cfg, spark.createDataFrame(items, "item_id int, title string, genres array<string>"),
                       "items")
    for night, dt in enumerate((VALUES["prev_dt"], VALUES["dt"])):
        rows = [(u, r, (u * 3 + r * (night + 1)) % 20 + 1, 1.0 / (r + u), "model" if u < 5 else "popular", dt)
                for u in range(1, 7) for r in range(1, 4)]
        schema = "user_id int, rank int, item_id int, score float, source string, model_run_id string"
        partitioned.publish(spark, cfg, spark.createDataFrame(rows, schema), "recommendations", dt)
    return cfg


def test_every_example_query_agrees_between_spark_sql_and_duckdb(spark, warehouse):
    queries, duck = _parse(QUERIES.read_text())
    assert {"user_list", "most_recommended", "genre_coverage", "night_diff", "night_diff_summary",
            "als_layout"} <= set(queries)
    con = duckdb.connect()
    for statement in _statements(duck["setup"]):
        con.execute(_fill(statement, {"warehouse": tables.root_uri(warehouse).removeprefix("file://")}))
    for name, sql in queries.items():
        (in_spark,) = _statements(_fill(sql, VALUES))
        (in_duckdb,) = _statements(_fill(duck.get(name, sql), VALUES))
        got, theirs = spark.sql(in_spark), con.execute(in_duckdb)
        ours = [tuple(_plain(v) for v in row) for row in got.collect()]
        duck_rows = [tuple(_plain(v) for v in row) for row in theirs.fetchall()]
        assert got.columns == [d[0] for d in theirs.description], name
        assert ours == duck_rows, name
        assert ours, f"{name} returned no rows on the fixture"


def test_the_als_layout_holds_each_list_in_rank_order(spark, warehouse):
    queries, _ = _parse(QUERIES.read_text())
    layout = spark.sql(_fill(queries["als_layout"], VALUES).rstrip(";"))
    assert layout.schema.simpleString() == \
        "struct<user_id:int,recommendations:array<struct<item_id:int,rating:float>>>"
    flat = spark.sql(f"SELECT user_id, item_id FROM dser.recommendations WHERE dt = '{VALUES['dt']}' "
                     "ORDER BY user_id, rank").collect()
    assert [(r.user_id, x.item_id) for r in layout.collect() for x in r.recommendations] == \
        [(r.user_id, r.item_id) for r in flat]
