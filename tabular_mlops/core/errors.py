"""Errors caused by what the user gave us (config, parameters, data).

Entry points turn them into one clear line on stderr and a non-zero exit; anything else
is a bug and keeps its traceback.
"""


class UserInputError(Exception):
    """A problem the user can fix: the message says what and where, in one line."""


class ConfigError(UserInputError):
    """The YAML config or a parameter overriding it is invalid."""


class DataError(UserInputError):
    """The table cannot be used for training as configured."""


class PromotionError(UserInputError):
    """A registry action cannot go ahead: no candidate, a model that does not load, ..."""


class StepFailedError(UserInputError):
    """A step `main` ran failed, or left nothing for the next step: the message names the
    step and gives the reason its own run recorded."""
