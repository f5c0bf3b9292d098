"""conf/default.toml is the schema: overrides, types, ranges, and the estimator's defaults."""

from __future__ import annotations

import inspect
import os

import pytest
from tests_support import REPO

from cfspark import CollaborativeFilter
from cfspark.app.config import CONFIG_PARAMS, load_config, load_defaults, parse_override
from cfspark.core.errors import ConfigError


def test_overrides_are_parsed_as_toml_values():
    assert parse_override("model.rank=20") == ("model", "rank", 20)
    assert parse_override("input.delimiter=;") == ("input", "delimiter", ";")
    assert parse_override("compare.als_reg_grid=[0.1, 0.3]") == ("compare", "als_reg_grid", [0.1, 0.3])
    assert parse_override("input.header=false") == ("input", "header", False)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('[model]\nrank = 4\nreg = 2\n[output]\npath = "results"\n')
    cfg = load_config(str(path), ["model.rank=6"])
    assert cfg["model"]["rank"] == 6 and cfg["model"]["reg"] == 2.0 and isinstance(cfg["model"]["reg"], float)
    assert cfg["output"]["path"] == "results" and cfg["model"]["max_iter"] == load_defaults()["model"]["max_iter"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("split.test_fraction=1.0", "split.test_fraction must be in [0, 1)"),
        ("model.learning_rate=0", "model.learning_rate must be > 0.0"),
        ("model.optimizer=sgd", "model.optimizer = 'sgd' is not one of adam, gd"),
        ("input.format=json", "input.format = 'json' is not one of csv, parquet, movielens"),
        ("nosection.key=1", "unknown config key nosection.key"),
        ("input.header=1", "config key input.header must be a bool"),
        ("compare.als_reg_grid=[]", "compare.als_reg_grid must be a non-empty list"),
        ("modelrank=3", "--set key must look like section.key"),
    ],
)
def test_invalid_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"))


def test_estimator_defaults_match_conf_default_toml_key_by_key():
    """The Params hold the defaults; conf/default.toml must say the same for every key it maps."""
    defaults = load_defaults()
    estimator = CollaborativeFilter()
    for (section, key), param in CONFIG_PARAMS.items():
        assert defaults[section][key] == estimator.getOrDefault(param), f"{section}.{key} against {param}"
    # Every [model] key is a Param, except the warm start's path, which the job turns into initialModel.
    assert set(defaults["model"]) - {key for (section, key) in CONFIG_PARAMS if section == "model"} == {"warm_start"}
    assert defaults["model"]["warm_start"] == "" and not estimator.isDefined(estimator.initialModel)


def test_the_als_comparison_ships_als_own_block_count():
    """compare.als_num_blocks is where the comparison states ALS's default block count
    (compare_als leaves ALS its own unless told), so the shipped value is ALS's."""
    from pyspark.ml.recommendation import ALS

    from cfspark.bench.compare import compare_als

    als = inspect.signature(ALS.__init__).parameters
    assert als["numUserBlocks"].default == als["numItemBlocks"].default == load_defaults()["compare"]["als_num_blocks"]
    assert inspect.signature(compare_als).parameters["num_blocks"].default is None


def test_block_counts_follow_the_data_size():
    from cfspark.fit.blockwise import blocks_for

    cap = 16_000_000  # maxBlockRatings' default
    assert CollaborativeFilter().getMaxBlockRatings() == load_defaults()["model"]["max_block_ratings"] == cap
    # 2 slots (local[2]): the fewest even count whose blocks hold at most the cap.
    sizes = (0, 1_000, 6_000_001, 22_080_000, 32_000_000, 32_000_001)
    assert [blocks_for(n, 2, cap) for n in sizes] == [2, 2, 2, 2, 2, 4]
    # More slots than the data fills at MIN_BLOCK_RATINGS a block: one block per million ratings.
    assert [blocks_for(n, 16, cap) for n in (5_500_000, 16_000_000, 22_080_000, 300_000_000)] == [5, 16, 16, 32]
    assert blocks_for(49_000_000, 3, cap) == 6  # 4 would hold them: the next multiple of 3
    # At most 64: past that, placement splits a side's blocks for maxBlockRatings itself.
    assert blocks_for(2 * 10**9, 3, cap) == 64 and blocks_for(10**9, 2, 10**9) == 2
    assert load_defaults()["model"]["num_user_blocks"] == 0  # 0 = derived from the data


def test_conf_course_toml_is_the_course_model():
    from cfspark import COURSE_PARAMS
    from cfspark.app.run import estimator_from_config
    from cfspark.data.read import Columns

    course = estimator_from_config(load_config(os.path.join(REPO, "conf", "course.toml")), Columns("u", "i", "r"))
    assert {k: course.getOrDefault(k) for k in COURSE_PARAMS} == COURSE_PARAMS
    assert course.getRegParam() == 10.0 and course.getLearningRate() == 0.05


def test_model_float32_reaches_both_half_steps_and_is_off_by_default():
    """The key becomes the float32 Param, which every half-step's StepConfig carries (the
    one-task loop, the λ search and the blockwise trainer all build theirs from it)."""
    from cfspark.app.run import estimator_from_config
    from cfspark.data.read import Columns

    columns = Columns("u", "i", "r")
    # λ_b fixed: "auto" (the default) is estimated from the ratings before a half-step is set up.
    on = estimator_from_config(load_config(None, ["model.float32=true", "model.bias_reg=5"]), columns).fit_settings()
    off = estimator_from_config(load_config(None, ["model.bias_reg=5"]), columns).fit_settings()
    assert on.float32 and [on.step_config(s).float32 for s in ("user", "item")] == [True, True]
    assert not off.float32 and [off.step_config(s).float32 for s in ("user", "item")] == [False, False]
    assert on.step_config("user", reg=0.3).float32  # the λ search's configs too
    with pytest.raises(ConfigError, match="model.float32 must be a bool"):
        load_config(None, ["model.float32=on"])
