"""Errors a user can cause, each carrying the setting it is about."""


class SettingError(ValueError):
    """A configuration value that is not allowed.

    `key` is the parameter name as the object knows it; `xilsweep.run`
    prefixes the config group, so the user sees e.g. ``loss.lam``.
    """

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")

    def in_group(self, group: str) -> "SettingError":
        return SettingError(f"{group}.{self.key}", self.value, self.allowed)


class DataError(RuntimeError):
    """Missing, corrupt or unobtainable data or checkpoint files."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def require(condition: bool, key: str, value, allowed: str) -> None:
    if not condition:
        raise SettingError(key, value, allowed)


def require_choice(key: str, value, choices) -> None:
    require(value in choices, key, value, "one of " + ", ".join(map(str, choices)))
