"""What the spark-submit entry points share: the --config/--set parser and the session."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable

from cfspark.app.config import Config, describe_keys, load_config
from cfspark.core.errors import (
    BusyError,
    CfsparkError,
    ConfigError,
    InputError,
    Interrupted,
    OutputError,
    TrainingError,
)


class _Once(argparse.Action):
    """An option given at most once: a second --config would silently drop the first file."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            parser.error(f"{option_string} is given twice; merge the files, or use --set for single keys")
        setattr(namespace, self.dest, values)


def config_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with --config and repeatable --set KEY=VALUE."""
    parser = argparse.ArgumentParser(
        description=description, epilog=describe_keys(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", action=_Once, help="TOML file whose keys override conf/default.toml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set model.rank=20 (repeatable)")  # fmt: skip
    return parser


def job_logging() -> None:
    """Spark's own log stays at WARN; cfspark logs each iteration's loss and seconds."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    logging.getLogger("cfspark").setLevel(logging.INFO)


def job_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def job_session(app_name: str, cfg: Config | None = None, *, als: bool = False):
    """The job's SparkSession (getOrCreate: spark-submit's master and confs apply).

    als: the job will fit Spark ALS, which cuts its RDD lineage every 10 iterations only
    when an RDD checkpoint dir is set; without one, a fit of 15 iterations or more can
    overflow the JVM stack. The session then gets a temporary dir, removed when the job exits.
    cfspark itself never needs it.
    """
    # Executors run the same interpreter as this driver unless told otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    if cfg is not None and cfg["spark"]["remote"]:
        return remote_session(cfg)
    builder = SparkSession.builder.appName(app_name).config("spark.log.level", "WARN")
    if cfg is not None:
        builder = builder.config("spark.sql.shuffle.partitions", str(cfg["spark"]["shuffle_partitions"]))
    if als:
        rdd_checkpoints = tempfile.mkdtemp(prefix="cfspark-als-checkpoints-")
        atexit.register(shutil.rmtree, rdd_checkpoints, ignore_errors=True)
        builder = builder.config("spark.checkpoint.dir", rdd_checkpoints)
    return builder.getOrCreate()


def remote_session(cfg: Config):
    """A Spark Connect session to spark.remote (sc://host:port). The server owns the static
    confs (master, memory, spark.checkpoint.dir); the job sets only its runtime ones."""
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(cfg["spark"]["remote"]).getOrCreate()
    spark.conf.set("spark.sql.shuffle.partitions", str(cfg["spark"]["shuffle_partitions"]))
    return spark


# One exit code per way a job can stop (docs, Operations).
# 1 is left to Python itself: an unexpected error, with its traceback.
EXIT_CODES: dict[type[CfsparkError], int] = {
    ConfigError: 2,
    InputError: 3,
    TrainingError: 4,
    OutputError: 5,
    BusyError: 6,
}
EXIT_SIGINT, EXIT_SIGTERM = 130, 143  # 128 + the signal number, as a shell reports it


def code_for(error: CfsparkError) -> int:
    """The exit code of the most specific class error belongs to."""
    for cls in type(error).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


_signals: list[int] = []  # the signals received while a job's body runs


def _raise_interrupted(signum: int, frame: object) -> None:
    _signals.append(signum)
    raise Interrupted(signum)


def _interrupted(signum: int) -> int:
    name = "SIGINT" if signum == signal.SIGINT else f"signal {signum}"
    print(f"cfspark: error: interrupted ({name})", file=sys.stderr)
    return EXIT_SIGINT if signum == signal.SIGINT else 128 + signum


def _cut_off_by_sigint(e: BaseException) -> bool:
    """Whether e was raised while a Ctrl-C (KeyboardInterrupt) was being handled."""
    seen = e.__context__
    while seen is not None:
        if isinstance(seen, KeyboardInterrupt):
            return True
        seen = seen.__context__
    return False


def spark_stopped() -> bool:
    """Whether the job's Spark has stopped under it: its JVM shut down (a SIGTERM sent to the
    JVM, or the JVM died), so each Spark call fails with whatever it was doing. Asked through
    the DataFrame API (one row), so it holds over Spark Connect too; False when no session
    was started."""
    from pyspark.sql import SparkSession

    try:
        spark = SparkSession.getActiveSession()
        if spark is None:
            return False
        spark.range(1).collect()
    except Exception:  # the session cannot run a one-row query: its JVM is gone
        return True
    return False


def _stopped() -> int:
    print("cfspark: error: Spark stopped under the job (its JVM was terminated, e.g. by SIGTERM, or died); "
          "nothing was written", file=sys.stderr)  # fmt: skip
    return EXIT_SIGTERM


def exit_code(body: Callable[[], int]) -> int:
    """Run a job's body; a CfsparkError becomes one 'cfspark: error: …' line on stderr and
    its class's exit code; SIGINT and SIGTERM become 130 and 143, after staging is cleaned up.

    A signal wins over the errors it causes on the way out (a py4j call cut off half-way
    fails again in the clean-up), and a Spark stopped under the job (its JVM terminated)
    wins over the error its last call reports: either is one line and 143 (130 for SIGINT)."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if _main_thread() else None
    _signals.clear()
    try:
        return body()
    except CfsparkError as e:
        if _signals:
            return _interrupted(_signals[0])
        if spark_stopped():
            return _stopped()
        print(f"cfspark: error: {e}", file=sys.stderr)
        return code_for(e)
    except KeyboardInterrupt:
        return _interrupted(signal.SIGINT)
    except Interrupted as e:
        return _interrupted(e.signum)
    except Exception as e:
        if _signals or _cut_off_by_sigint(e):
            return _interrupted(_signals[0] if _signals else signal.SIGINT)
        if spark_stopped():
            return _stopped()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
