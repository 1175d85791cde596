"""Typed configuration: defaults, validation naming the key, overrides."""
import pytest

from dser_spark.config import Config, ConfigError, from_dict, load_config


def test_defaults_are_the_embedded_default():
    cfg = load_config(None)
    assert cfg.data.path == "builtin:ml-100k"
    assert cfg.data.format == "recbole"
    assert cfg.warehouse.root == "./warehouse"
    assert cfg.recommend.k == 10
    assert cfg.train.negatives == 4


def test_default_yaml_matches_code_defaults_where_it_sets_nothing_new():
    from_file = load_config("conf/default.yaml")
    assert from_file.data.path == Config().data.path
    assert from_file.spark.master == "local[*]"


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"train\.epoch_count"):
        from_dict({"train": {"epoch_count": 3}})
    with pytest.raises(ConfigError, match=r"'bogus'"):
        from_dict({"bogus": 1})


@pytest.mark.parametrize("data, key", [
    ({"train": {"epochs": "five"}}, "train.epochs"),
    ({"train": {"epochs": -1}}, "train.epochs"),
    ({"recommend": {"k": 0}}, "recommend.k"),
    ({"data": {"format": "csv"}}, "data.format"),
    ({"data": {"max_reject_fraction": 2}}, "data.max_reject_fraction"),
    ({"split": {"validation": "maybe"}}, "split.validation"),
    ({"model": {"mlp_layers": []}}, "model.mlp_layers"),
    ({"train": {"sparse_ids": True, "weight_decay": 0.01}}, "train.sparse_ids"),
    ({"train": {"validation_metric": "full", "distributed": True}}, "train.validation_metric"),
    ({"model": {"encoder": "attention", "attention": {"mask_seen": True}}, "train": {"loss": "softmax"}},
     "model.attention.mask_seen"),
])
def test_bad_values_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(data)


def test_overrides_parse_yaml_values():
    cfg = load_config("conf/default.yaml", ["train.epochs=7", "recommend.k=20", "seed=3",
                                            "data.path=/data/ml", "model.mlp_layers=[32,16]",
                                            "spark.conf.spark.sql.shuffle.partitions=3"])
    assert (cfg.train.epochs, cfg.recommend.k, cfg.seed) == (7, 20, 3)
    assert cfg.data.path == "/data/ml"
    assert cfg.model.mlp_layers == [32, 16]
    assert cfg.spark.conf["spark.sql.shuffle.partitions"] == "3"
    assert "spark.driver.memory" in cfg.spark.conf  # defaults merged, not replaced


def test_override_errors():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.epochs"])
    with pytest.raises(ConfigError, match=r"train\.nope"):
        load_config(None, ["train.nope=1"])


def test_round_trip_through_dict():
    cfg = load_config(None, ["train.epochs=9"])
    assert from_dict(cfg.to_dict()) == cfg


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_readme_config_table_is_the_generated_one():
    """The README's table and the declarations in config.py must not drift apart."""
    from pathlib import Path

    from dser_spark.config import markdown_table
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("<!-- config-table: generated")
    body = readme[readme.index("\n", start) + 1:readme.index("<!-- config-table: end -->")]
    assert body == markdown_table(), "README config table is stale: paste `dser-spark config --markdown`"


def test_every_key_is_documented_and_listed_once():
    import dataclasses

    from dser_spark.config import key_docs
    docs = list(key_docs())
    keys = [d.key for d in docs]
    assert len(keys) == len(set(keys))
    assert all(d.doc.strip() and d.type for d in docs)
    leaves = []

    def walk(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                leaves.append(f"{prefix}{f.name}")

    walk(Config())
    assert keys == leaves
    assert {"evaluate.baselines", "recommend.users", "recent.windows", "train.validation_k"} <= set(keys)


def test_bounds_come_from_the_declarations():
    from dser_spark.config import key_docs
    types = {d.key: d.type for d in key_docs()}
    assert types["train.epochs"] == "int >= 0"
    assert types["recommend.k"] == "int > 0"
    assert types["train.pretrain_alpha"] == "float >= 0, <= 1"
    assert types["model.mlp_layers"] == "list of int > 0, not empty"
    with pytest.raises(ConfigError, match=r"train\.pretrain_alpha: must be <= 1"):
        from_dict({"train": {"pretrain_alpha": 1.5}})
    with pytest.raises(ConfigError, match=r"recent\.windows: must be > 0"):
        from_dict({"recent": {"windows": [3, 0]}})
    with pytest.raises(ConfigError, match=r"evaluate\.baselines\[1\]"):
        from_dict({"evaluate": {"baselines": ["ALS", "SVD"]}})
    with pytest.raises(ConfigError, match=r"recommend\.users: must not be empty"):
        from_dict({"recommend": {"users": " "}})
    with pytest.raises(ConfigError, match="at least one of use_gmf"):
        from_dict({"model": {"use_gmf": False, "use_mlp": False, "use_recency": False}})


def test_config_command_prints_the_effective_config_with_its_documentation(capsys):
    import yaml

    from dser_spark import cli
    assert cli.main(["config", "--config", "conf/default.yaml", "--set", "train.epochs=3",
                     "--set", "spark.conf.spark.x.y=1"]) == 0
    out = capsys.readouterr().out
    assert from_dict(yaml.safe_load(out)) == load_config("conf/default.yaml", ["train.epochs=3",
                                                                              "spark.conf.spark.x.y=1"])
    assert "# maximum epochs of the selection fit" in out and "(int >= 0; default 5)" in out
    assert cli.main(["config", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| key | type | default | meaning |")
    assert cli.main(["config", "--set", "train.epochs=-1"]) == 2
    assert "train.epochs: must be >= 0" in capsys.readouterr().err


def test_gitignore_covers_every_shipped_warehouse():
    """Derived MovieLens data must never be committed: every conf/ warehouse root is ignored by git."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for conf in sorted((repo / "conf").glob("*.yaml")):
        cfg = load_config(conf)
        root = cfg.warehouse.root
        if "://" in root:
            continue
        probe = Path(root) / "interactions" / "part-0.parquet"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=repo).returncode == 0
        assert ignored, f"{conf.name}: warehouse.root {root} is not in .gitignore"
