"""The two ways a job can be refused before it writes anything."""


class CfsparkError(Exception):
    """Base class: the message is one line a user can act on."""


class ConfigError(CfsparkError):
    """A config key or value is invalid."""


class InputError(CfsparkError):
    """The input data is unusable: missing, malformed or inconsistent."""
