"""Why a job stopped. Each class has its own exit code (cfspark.app.cli.EXIT_CODES)."""


class CfsparkError(Exception):
    """Base class: the message is one line a user can act on."""


class ConfigError(CfsparkError):
    """A config key or value is invalid."""


class InputError(CfsparkError):
    """The input data is unusable: missing, malformed or inconsistent."""


class TrainingError(CfsparkError):
    """Training failed: a non-finite loss, or a failure while the model was being fitted."""


class OutputError(CfsparkError):
    """The results cannot be written: an unwritable output path, or a failure while writing."""


class BusyError(OutputError):
    """Another live run holds output.path (or its checkpoint dir); retry once it has finished."""


class Interrupted(BaseException):
    """SIGTERM (or another signal) arrived; a BaseException, so staging cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


class RepeatedPairsError(InputError):
    """A fit met a (user, item) pair more than once where it orders each user's ratings
    (the one-task arrays, the packed user blocks): the estimator checks for repeats there,
    not in a shuffle of its own, and names its columns and Param in the message it raises.

    pairs: how many pairs repeat; user, item: one of them in the input's ids; times: its rows."""

    def __init__(self, pairs: int, user: object, item: object, times: int):
        super().__init__(
            f"{pairs} (user, item) pair(s) appear more than once, e.g. {{user: {user!r}, item: {item!r}}} "
            f"appears {times} times"
        )
        self.pairs, self.user, self.item, self.times = pairs, user, item, times
