"""Operating it every night, on the real ml-100k: models that outlive serving changes and nights, run
records, quiet logs, --model, --from-stage, backfills, model retention and the quality gate.

The nightly ran as a scheduler starts it: spark-submit on a local cluster, output to files
(tests/nightlies.py). The tests drive single stages through the command line on a copy of its warehouse,
in the order a platform team would.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dser_spark import cli, models, partitioned, publish, runs, tables
from dser_spark.artifacts import load_from_bytes
from dser_spark.model import newest_first
from dser_spark.config import load_config
from dser_spark.model import window_means
from dser_spark.recommend import Popularity, Serving
from nightlies import CONFIG, DT as D0, SETS

pytestmark = pytest.mark.slow
D1, D2, D3, D4 = "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"


@pytest.fixture(scope="module")
def nightly(ml100k_nightlies, tmp_path_factory):
    """A copy of the cluster nightly's warehouse (its own metastore left behind: this session has one)."""
    run = ml100k_nightlies
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    root = tmp_path_factory.mktemp("lifecycle") / "wh"
    shutil.copytree(tables.root_uri(run.cluster).removeprefix("file://"), root,
                    ignore=shutil.ignore_patterns("metastore_db", "spark-warehouse"))
    sets = [f"warehouse.root={root}", *SETS]
    return {"sets": sets, "cfg": load_config(CONFIG, sets), "log": run.stdout, "spark_log": run.stderr,
            "out": run.stdout}


def _run(nightly, *args, stage="recommend", dt=D1, extra=()):
    argv = [stage, "--config", str(CONFIG), "--dt", dt, *args]
    for s in [*nightly["sets"], *extra]:
        argv += ["--set", s]
    return cli.main(argv)


def _partition(nightly, dt):
    table = tables.table_uri(nightly["cfg"], "recommendations").removeprefix("file://")
    return pd.concat([pd.read_parquet(f) for f in partitioned.published_files(table)[dt]], ignore_index=True)


def test_the_nightly_publishes_prints_its_model_and_leaves_run_records(spark, nightly):
    cfg, out = nightly["cfg"], nightly["out"]
    recs = _partition(nightly, D0)
    assert recs.user_id.nunique() == 943 and len(recs) == 9430 and recs.item_id.nunique() > 50
    inter = tables.read_table(spark, cfg, "interactions").toPandas()
    assert not set(zip(recs.user_id, recs.item_id)) & set(zip(inter.user_id, inter.item_id))
    for _, mine in recs.groupby("user_id"):
        mine = mine.sort_values("rank")
        assert mine["rank"].tolist() == list(range(1, 11)) and (np.diff(mine.score) <= 0).all()
    mid = models.latest(spark, cfg)
    assert set(recs.model_run_id) == {mid} and f"model: {mid}" in out and "users scored: 943" in out
    hr = {line.split()[0]: float(line.split()[2]) for line in out.splitlines()
          if line.startswith("  ") and "HR@10" in line}  # the summary's lines
    assert hr["DSER"] > hr["ItemPop"] + 0.2
    assert "run records:" in out
    (record_dir,) = (Path(tables.root_uri(cfg).removeprefix("file://")) / "runs").iterdir()
    records = {p.stem: json.loads(p.read_text()) for p in record_dir.glob("*.json")}
    assert set(records) == {"prepare", "sequences", "embed", "train", "evaluate", "recommend"}
    assert all(r["status"] == "ok" and r["ended"] >= r["started"] and r["package_version"] for r in records.values())
    assert records["prepare"]["tables_written"]["interactions"] == 100_000
    assert records["prepare"]["rejected_rows"] == 0
    assert records["sequences"]["tables_read"]["interactions"] == 100_000
    assert records["train"]["model_id"] == records["recommend"]["model_id"] == mid
    assert records["recommend"]["tables_written"] == {"recommendations": 9430}
    assert records["recommend"]["config"]["recommend"]["k"] == 10
    manifest = models.manifest(spark, cfg, mid)
    assert manifest["trained_for"] == [D0] and manifest["published"] == [D0]
    assert manifest["test"]["sampled HR@10"] == pytest.approx(hr["DSER"], abs=1e-4)
    assert manifest["fingerprint"]["positives"] == 100_000 and manifest["validation"]["best_val_hr"] > 0.5


def test_logs_written_to_a_file_have_no_progress_bars(nightly):
    log = nightly["log"]
    assert "\r" not in log and "\r" not in nightly["spark_log"]
    assert "DSER[select] epoch 1/5: loss" in log and "DSER[serve] epoch 1/" in log


def test_recommend_again_after_a_serving_key_changed(spark, nightly):
    assert _run(nightly, dt=D0, extra=["recommend.k=20", "publish.retain=5", "spark.conf.spark.sql.shuffle.partitions=3",
                                        "train.show_progress=false"]) == 0
    recs = _partition(nightly, D0)
    assert len(recs) == 943 * 20 and set(recs.model_run_id) == {models.latest(spark, nightly["cfg"])}


def test_a_later_night_is_scored_with_the_latest_model_and_tonights_history(spark, nightly):
    cfg = nightly["cfg"]
    inter = tables.read_table(spark, cfg, "interactions").toPandas()
    user = 1
    known = set(inter[inter.user_id == user].item_id)
    fresh = [int(i) for i in sorted(set(inter.item_id) - known)[:4]]  # items the model knows, new to user 1
    later = inter.ts.max() + pd.Timedelta(days=1)
    extra = pd.DataFrame({"user_id": user, "item_id": fresh, "rating": 4.0,
                          "ts": [later + pd.Timedelta(minutes=m) for m in range(4)]})
    grown = pd.concat([inter, extra], ignore_index=True).astype({"user_id": "int32", "item_id": "int32",
                                                                   "rating": "float32"})
    tables.write_table(spark, cfg, spark.createDataFrame(grown, "user_id int, item_id int, rating float, ts timestamp"),
                       "interactions")
    try:
        assert _run(nightly, dt=D1) == 0
    finally:
        tables.write_table(spark, cfg, spark.createDataFrame(inter, "user_id int, item_id int, rating float, "
                                                                    "ts timestamp"), "interactions")
    mid = models.latest(spark, cfg)
    recs = _partition(nightly, D1)
    assert set(recs.model_run_id) == {mid}  # no model was trained for D1: the newest one
    mine = recs[recs.user_id == user].sort_values("rank")
    assert not set(mine.item_id) & set(fresh)
    # the user state tonight is the one of the longer history, not the one stored at training time
    trained = load_from_bytes(models.files(spark, cfg, mid, "serve"))
    history = grown[grown.user_id == user].sort_values(["ts", "item_id"]).item_id.to_numpy(np.int64)
    serving = Serving(trained, cfg.recommend, Popularity(np.array([1]), np.array([1])))
    idx = np.array([int(np.searchsorted(trained.user_ids, user))])
    tonight = serving.known_user_parts(idx, [history])
    expected_recent = window_means(trained.model.item_vectors,
                                   newest_first([np.searchsorted(trained.item_ids, history)], 20),
                                   trained.model.windows)
    with torch.no_grad():
        expected = trained.model.user_part(torch.from_numpy(idx), expected_recent)
        stored = trained.model.user_part(torch.from_numpy(idx))
    assert all(torch.allclose(a, b) for a, b in zip(tonight, expected))
    assert not torch.allclose(tonight[2], stored[2])  # the stored windows ended before the new items
    got = serving.recommend(np.array([user]), [history])
    assert got.item_id.tolist() == mine.item_id.tolist()


def test_the_gate_refuses_a_worse_model_until_forced_and_model_names_one(spark, nightly):
    cfg = nightly["cfg"]
    good = models.latest(spark, cfg)
    untrained = ["train.epochs=0", "evaluate.baselines=[]"]
    assert _run(nightly, stage="train", dt=D2, extra=untrained) == 0
    assert _run(nightly, stage="evaluate", dt=D2, extra=untrained) == 0
    bad = models.latest(spark, cfg)
    assert bad != good
    assert publish.model_test_hr(spark, cfg, bad) < 0.95 * publish.model_test_hr(spark, cfg, good)
    before = partitioned.partitions(spark, cfg, "recommendations")
    assert _run(nightly, dt=D2) == 3  # the model trained for D2 is refused
    assert partitioned.partitions(spark, cfg, "recommendations") == before
    refused = tables.read_json(spark, cfg, runs.record_name(load_config(CONFIG, nightly["sets"]), D2, "recommend"))
    assert refused["status"] == "refused" and f"{bad}" in refused["error"]
    assert _run(nightly, "--model", good, dt=D2) == 0  # --model wins over the model trained for D2
    assert set(_partition(nightly, D2).model_run_id) == {good}
    assert _run(nightly, "--force", dt=D3) == 0  # no model for D3: _latest (the bad one), forced
    assert set(_partition(nightly, D3).model_run_id) == {bad}
    assert _run(nightly, "--model", "dser-nosuchmodel", dt=D3) == 1


def test_model_retention_keeps_what_partitions_and_latest_point_to(spark, nightly):
    cfg = nightly["cfg"]
    published = publish.published_models(spark, cfg)
    in_use = set(published.values())
    assert len(in_use) == 2  # the good model (D0..D2) and the forced bad one (D3)
    for lr in ("0.005", "0.004"):  # two more models nobody publishes from
        assert _run(nightly, stage="train", dt=D4, extra=["train.epochs=0", f"train.lr={lr}"]) == 0
    unused, newest = models.model_ids(spark, cfg)[-2:]
    assert models.latest(spark, cfg) == newest
    assert _run(nightly, "--model", published[D0], dt=D4, extra=["publish.retain_models=1"]) == 0
    left = set(models.model_ids(spark, cfg))
    assert unused not in left and in_use | {newest} <= left


def test_from_stage_resumes_without_redoing_earlier_stages(spark, nightly, tmp_path):
    cfg = nightly["cfg"]
    assert _run(nightly, "--from-stage", "recommend", "--model", models.model_ids(spark, cfg)[0],
                stage="nightly", dt=D4) == 0
    record_dir = Path(tables.root_uri(cfg).removeprefix("file://")) / "runs" / runs.run_id(cfg, D4)
    assert sorted(p.stem for p in record_dir.glob("*.json")) == ["recommend"]
    empty = [f"warehouse.root={tmp_path / 'empty'}"]
    assert _run(nightly, "--from-stage", "train", stage="nightly", dt=D4, extra=empty) == 1


def test_backfill_window_is_checked_before_any_work(spark, nightly, capsys):
    cfg = nightly["cfg"]
    assert partitioned.partitions(spark, cfg, "recommendations") == [D0, D1, D2, D3, D4]
    # publish.retain=3: 3 partitions newer than D1 -> refused up front; D2 has only 2 newer -> allowed
    assert _run(nightly, dt=D1, extra=["publish.retain=3"]) == 2
    assert "older than the 3 newer published partitions" in capsys.readouterr().err
    assert _run(nightly, stage="nightly", dt=D1, extra=["publish.retain=3"]) == 2
    assert partitioned.partitions(spark, cfg, "recommendations") == [D0, D1, D2, D3, D4]
    assert _run(nightly, "--force", dt=D2, extra=["publish.retain=3"]) == 0
    assert partitioned.partitions(spark, cfg, "recommendations") == [D2, D3, D4]
