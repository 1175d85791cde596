-- Example downstream queries over the published recommendations.
--
-- Spark SQL (catalog database dser; values come from -d):
--   spark-sql --database dser -d dt=2026-11-25 -d prev_dt=2026-11-24 -d user_id=1 -f scripts/queries.sql
-- DuckDB over the Parquet files (no metastore: works while a nightly run holds it): run the
-- setup below (replace ${warehouse} by the warehouse root); it reads the table's manifest of
-- complete partitions (recommendations/_published.json), so a night being written is never
-- read; run it again to see a night published later. Then any query with the
-- ${...} values filled in. Every query is the same text in both engines except als_layout,
-- whose DuckDB spelling is below; tests/test_queries.py runs them all in both and checks
-- that they agree.
--
-- duckdb setup begin
--   CREATE SCHEMA IF NOT EXISTS dser;
--   SET VARIABLE recommendation_files = (SELECT list('${warehouse}/recommendations/' || p.path || '/*.parquet') FROM (SELECT unnest(partitions) AS p FROM read_json_auto('${warehouse}/recommendations/_published.json')));
--   CREATE OR REPLACE VIEW dser.recommendations AS SELECT * FROM read_parquet(getvariable('recommendation_files'), hive_partitioning = true, hive_types_autocast = false);
--   CREATE OR REPLACE VIEW dser.items AS SELECT * FROM read_parquet('${warehouse}/items/*.parquet');
--   CREATE OR REPLACE MACRO explode(x) AS unnest(x);
-- duckdb setup end
--
-- duckdb als_layout begin
--   SELECT user_id, list(struct_pack(item_id := item_id, rating := score) ORDER BY rank) AS recommendations FROM dser.recommendations WHERE dt = '${dt}' GROUP BY user_id ORDER BY user_id;
-- duckdb als_layout end

-- name: user_list
-- One user's list with titles.
SELECT r.rank, r.item_id, i.title, r.score, r.source
FROM dser.recommendations r
JOIN dser.items i ON i.item_id = r.item_id
WHERE r.dt = '${dt}' AND r.user_id = ${user_id}
ORDER BY r.rank;

-- name: most_recommended
-- The items on the most lists, with their mean rank.
SELECT r.item_id, i.title, count(*) AS users, round(avg(r.rank), 2) AS mean_rank
FROM dser.recommendations r
JOIN dser.items i ON i.item_id = r.item_id
WHERE r.dt = '${dt}'
GROUP BY r.item_id, i.title
ORDER BY users DESC, r.item_id
LIMIT 20;

-- name: genre_coverage
-- Per genre: catalogue items, how many of them are recommended to anyone, and list slots taken.
WITH catalogue AS (
  SELECT item_id, explode(genres) AS genre FROM dser.items
), recommended AS (
  SELECT item_id, count(*) AS slots FROM dser.recommendations WHERE dt = '${dt}' GROUP BY item_id
)
SELECT c.genre,
       count(*) AS catalogue_items,
       count(r.item_id) AS recommended_items,
       round(count(r.item_id) / count(*), 4) AS coverage,
       coalesce(sum(r.slots), 0) AS slots
FROM catalogue c
LEFT JOIN recommended r ON r.item_id = c.item_id
GROUP BY c.genre
ORDER BY recommended_items DESC, c.genre;

-- name: night_diff
-- What changed between two nights: items added to or dropped from a list, or moved.
WITH prev_night AS (
  SELECT user_id, item_id, rank FROM dser.recommendations WHERE dt = '${prev_dt}'
), this_night AS (
  SELECT user_id, item_id, rank FROM dser.recommendations WHERE dt = '${dt}'
)
SELECT coalesce(t.user_id, p.user_id) AS user_id,
       coalesce(t.item_id, p.item_id) AS item_id,
       CASE WHEN p.item_id IS NULL THEN 'added' WHEN t.item_id IS NULL THEN 'dropped' ELSE 'moved' END AS change,
       p.rank AS rank_before,
       t.rank AS rank_after
FROM this_night t
FULL OUTER JOIN prev_night p ON p.user_id = t.user_id AND p.item_id = t.item_id
WHERE p.item_id IS NULL OR t.item_id IS NULL OR p.rank <> t.rank
ORDER BY user_id, item_id;

-- name: night_diff_summary
-- How stable the lists are from one night to the next.
WITH prev_night AS (
  SELECT user_id, item_id FROM dser.recommendations WHERE dt = '${prev_dt}'
), this_night AS (
  SELECT user_id, item_id FROM dser.recommendations WHERE dt = '${dt}'
), per_user AS (
  SELECT t.user_id, count(p.item_id) AS kept, count(*) AS listed
  FROM this_night t
  LEFT JOIN prev_night p ON p.user_id = t.user_id AND p.item_id = t.item_id
  GROUP BY t.user_id
)
SELECT count(*) AS users,
       sum(CASE WHEN kept < listed THEN 1 ELSE 0 END) AS users_with_changes,
       round(avg(kept / listed), 4) AS mean_overlap
FROM per_user;

-- name: als_layout
-- Spark MLlib ALS's recommendForAllUsers layout: one row per user, array<struct<item_id, rating>>.
SELECT user_id, transform(array_sort(collect_list(struct(rank, item_id, score))), x -> named_struct('item_id', x.item_id, 'rating', x.score)) AS recommendations FROM dser.recommendations WHERE dt = '${dt}' GROUP BY user_id
ORDER BY user_id;
