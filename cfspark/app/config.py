"""Job configuration: the defaults, a user's TOML file, then --set overrides.

The defaults are cfspark/app/default.toml, package data read through importlib.resources,
so they load from a source tree, an installed wheel and the --py-files zip alike;
conf/default.toml in the repository is a symlink to it. That file is the schema: a key it
does not define is an error, and every value must have the type of its default.
CONFIG_PARAMS maps the [model] keys (and a few others) onto the estimator's Params.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import math
import re
import tomllib
from importlib import resources
from typing import Any

from cfspark.core.errors import ConfigError
from cfspark.data.weights import WEIGHT_MAPPINGS
from cfspark.kernels.losses import LOSSES
from cfspark.kernels.optimizers import OPTIMIZERS
from cfspark.ml.params import COLD_START, IMPLICIT_MODELS, REG_SCALINGS, REG_UNITS, SAMPLINGS

DEFAULTS_PACKAGE, DEFAULT_CONFIG = "cfspark.app", "default.toml"  # a resource of this package

Config = dict[str, dict[str, Any]]

# The job's [model] and [checkpoint] keys → Params (the job's column keys come from [input]).
CONFIG_PARAMS: dict[tuple[str, str], str] = {
    ("model", "rank"): "rank",
    ("model", "max_iter"): "maxIter",
    ("model", "reg"): "regParam",
    ("model", "reg_scaling"): "regScaling",
    ("model", "reg_units"): "regUnits",
    ("model", "bias_reg"): "biasReg",
    ("model", "item_bias"): "itemBias",
    ("model", "mean_prior"): "meanPrior",
    ("model", "tol"): "tol",
    ("model", "loss"): "loss",
    ("model", "optimizer"): "optimizer",
    ("model", "learning_rate"): "learningRate",
    ("model", "inner_steps"): "innerSteps",
    ("model", "num_user_blocks"): "numUserBlocks",
    ("model", "num_item_blocks"): "numItemBlocks",
    ("model", "max_block_ratings"): "maxBlockRatings",
    ("model", "float32"): "float32",
    ("model", "seed"): "seed",
    ("model", "init_scale"): "initScale",
    ("model", "item_offset"): "itemOffset",
    ("model", "offset_prior"): "offsetPrior",
    ("model", "cold_start"): "coldStartStrategy",
    ("model", "exposure"): "exposure",
    ("model", "exposure_reg"): "exposureRegParam",
    ("negatives", "per_labelled"): "exposureNegatives",
    ("negatives", "coarse_iterations"): "exposureCoarseIterations",
    ("negatives", "weight"): "negativeWeight",
    ("negatives", "sampling"): "negativeSampling",
    ("input", "weight_col"): "weightCol",
    ("input", "weight_alpha"): "alpha",
    ("input", "duplicates"): "duplicates",
    ("input", "weight_mapping"): "weightMapping",
    ("input", "weight_epsilon"): "weightEpsilon",
    ("model", "implicit"): "implicit",
    ("checkpoint", "interval"): "checkpointInterval",
}


def load_defaults() -> Config:
    with resources.files(DEFAULTS_PACKAGE).joinpath(DEFAULT_CONFIG).open("rb") as f:
        return tomllib.load(f)


def parse_override(text: str) -> tuple[str, str, Any]:
    """'model.rank=20' → ('model', 'rank', 20). A value that is not TOML is a string, stripped
    of surrounding spaces unless it is nothing but spaces ('input.delimiter= ' is one space)."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must look like section.key, got {key.strip()!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip() or raw
    return parts[0], parts[1], value


# Words a numeric key accepts besides numbers.
_WORDS = {
    ("model", "reg"): ("auto",),
    ("model", "bias_reg"): ("auto",),
    ("model", "mean_prior"): ("auto",),
    ("input", "weight_alpha"): ("auto",),
    ("model", "exposure_reg"): ("auto",),
}


def _merge(cfg: Config, section: str, key: str, value: Any, source: str) -> None:
    if section not in cfg or key not in cfg[section]:
        raise ConfigError(f"unknown config key {section}.{key} (from {source}){_suggestion(cfg, section, key)}")
    default = cfg[section][key]
    if isinstance(default, str) and type(value) is datetime.date:  # TOML reads 2026-11-28 as a date
        value = value.isoformat()
    if value in _WORDS.get((section, key), ()):
        ok = True
    elif (section, key) in _WORDS:  # a number, or one of its words (its default may be either)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(value, bool) and isinstance(default, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float))
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        words = _WORDS.get((section, key), ())
        kind = " or ".join(["float" if words else type(default).__name__, *(repr(w) for w in words)])
        raise ConfigError(f"config key {section}.{key} must be a {kind}, got {value!r} (from {source})")
    cfg[section][key] = value


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the file at path (if any), then each 'section.key=value' override."""
    cfg = copy.deepcopy(load_defaults())
    if path:
        try:
            with open(path, "rb") as f:
                user = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        except OSError as e:  # a folder, or a file this user may not read
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        for section, values in user.items():
            if not isinstance(values, dict):
                raise ConfigError(f"config key {section} must be a [section] in {path}")
            for key, value in values.items():
                _merge(cfg, section, key, value, path)
    for text in overrides:
        section, key, value = parse_override(text)
        _merge(cfg, section, key, value, "--set")
    validate(cfg)
    return cfg


_CHOICES = {
    ("input", "format"): ("csv", "parquet", "movielens"),
    ("input", "id_type"): ("auto", "long", "string"),
    ("input", "duplicates"): ("error", "mean", "max", "last", "sum"),
    ("model", "loss"): LOSSES,
    ("negatives", "sampling"): SAMPLINGS,
    ("input", "weight_mapping"): WEIGHT_MAPPINGS,
    ("model", "implicit"): IMPLICIT_MODELS,
    ("negatives", "scope"): ("all", "train"),
    ("output", "exclude"): ("labelled", "positives", "none"),
    ("model", "optimizer"): OPTIMIZERS,
    ("model", "reg_scaling"): REG_SCALINGS,
    ("model", "reg_units"): REG_UNITS,
    ("model", "cold_start"): COLD_START,
}

_BOUNDS = {
    # key: (lowest allowed, whether the lowest is allowed itself)
    ("model", "rank"): (1, True),
    ("model", "reg"): (0.0, True),
    ("model", "bias_reg"): (0.0, True),
    ("model", "mean_prior"): (0.0, True),
    ("model", "tol"): (0.0, True),
    ("model", "max_iter"): (1, True),
    ("model", "learning_rate"): (0.0, False),
    ("model", "inner_steps"): (1, True),
    ("model", "num_user_blocks"): (0, True),
    ("model", "num_item_blocks"): (0, True),
    ("model", "max_block_ratings"): (1, True),
    ("model", "init_scale"): (0.0, False),
    ("output", "top_n"): (1, True),
    ("output", "similar_items"): (0, True),
    ("checkpoint", "interval"): (0, True),
    ("compare", "als_max_iter"): (1, True),
    ("compare", "als_num_blocks"): (1, True),
    ("spark", "shuffle_partitions"): (1, True),
    ("spark", "warm_workers"): (0, True),
    ("model", "offset_prior"): (0.0, False),
    ("negatives", "per_positive"): (0, True),
    ("negatives", "per_labelled"): (1, True),
    ("negatives", "coarse_iterations"): (0, True),
    ("negatives", "weight"): (0.0, False),
    ("model", "exposure_reg"): (0.0, True),
    ("input", "weight_alpha"): (0.0, True),
    ("input", "weight_epsilon"): (0.0, False),
    ("compare", "als_clip_eps"): (0.0, False),
}


def _suggestion(cfg: Config, section: str, key: str) -> str:
    """'; did you mean model.rank?' for the nearest known key, else a pointer to the defaults."""
    known = [f"{s}.{k}" for s, values in cfg.items() for k in values]
    close = difflib.get_close_matches(f"{section}.{key}", known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else "; see conf/default.toml (or --help) for the keys"


def describe_keys() -> str:
    """Every key with its default, for --help."""
    lines = ["config keys (defaults from conf/default.toml, where each is explained):"]
    for section, values in load_defaults().items():
        for key, value in values.items():
            shown = "nan" if isinstance(value, float) and math.isnan(value) else repr(value)
            lines.append(f"  {section}.{key} = {shown}")
    return "\n".join(lines)


# Keys where nan is a value with a meaning (off); every other float must be finite.
_NAN_MEANS_OFF = {("input", "binarize_threshold")}


def _check_finite(cfg: Config) -> None:
    for section, values in cfg.items():
        for key, value in values.items():
            numbers = value if isinstance(value, list) else [value]
            for v in numbers:
                if not isinstance(v, float) or math.isfinite(v):
                    continue
                if math.isnan(v) and (section, key) in _NAN_MEANS_OFF:
                    continue
                raise ConfigError(f"{section}.{key} must be finite, got {value}")


def _check_run_date(cfg: Config) -> None:
    run_date = cfg["output"]["run_date"]
    if not run_date:
        return
    try:
        ok = bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", run_date)) and datetime.date.fromisoformat(run_date)
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"output.run_date must be a date YYYY-MM-DD (or empty: no partitions), got {run_date!r}")


def validate(cfg: Config) -> None:
    """Refuse values that are the right type but make no sense."""
    _check_finite(cfg)
    _check_run_date(cfg)
    for (section, key), choices in _CHOICES.items():
        value = cfg[section][key]
        if value not in choices:
            raise ConfigError(f"{section}.{key} = {value!r} is not one of {', '.join(choices)}")
    for (section, key), (low, inclusive) in _BOUNDS.items():
        value = cfg[section][key]
        if value in _WORDS.get((section, key), ()):
            continue
        if value < low or (value == low and not inclusive):
            op = ">=" if inclusive else ">"
            raise ConfigError(f"{section}.{key} must be {op} {low}, got {value}")
    frac = cfg["split"]["test_fraction"]
    if not 0.0 <= frac < 1.0:
        raise ConfigError(f"split.test_fraction must be in [0, 1), got {frac}")
    for key in ("als_reg_grid", "als_alpha_grid"):
        grid = cfg["compare"][key]
        if not grid or not all(isinstance(g, (int, float)) and not isinstance(g, bool) and g >= 0 for g in grid):
            raise ConfigError(f"compare.{key} must be a non-empty list of numbers >= 0, got {grid}")
    binary = cfg["model"]["loss"] == "bce"
    if not binary:
        for section, key, why in [
            ("input", "binarize_threshold", "turns ratings into labels"),
            ("negatives", "per_positive", "samples 0-labels"),
        ]:
            value = cfg[section][key]
            if value == value and value:  # set, and not nan
                raise ConfigError(f'{section}.{key} {why}, which needs model.loss = "bce"')
        if cfg["output"]["exclude"] == "positives":
            raise ConfigError('output.exclude = "positives" needs model.loss = "bce"')
    elif cfg["input"]["duplicates"] in ("mean", "sum"):
        raise ConfigError(
            f'input.duplicates = "{cfg["input"]["duplicates"]}" would make labels other than 0/1; '
            'use "max", "last" or "error" with bce'
        )
    elif cfg["model"]["exposure"] and cfg["negatives"]["per_positive"]:
        raise ConfigError(
            "negatives.per_positive samples 0-labels for the plain bce model, but model.exposure samples its own "
            "(negatives.per_labelled): set model.exposure = false, or negatives.per_positive = 0"
        )
    if cfg["input"]["format"] == "csv" and not cfg["input"]["delimiter"]:
        raise ConfigError('input.delimiter must not be empty (a space is --set "input.delimiter= ")')
    if not cfg["output"]["path"]:
        raise ConfigError("output.path must not be empty")
    named = [cfg["input"][k] for k in ("user_col", "item_col", "rating_col", "weight_col") if cfg["input"][k]]
    if len(set(named)) < len(named):
        what = "input.user_col, item_col, rating_col and weight_col"
        raise ConfigError(f"{what} must name different columns, got {named}")
