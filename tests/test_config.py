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
