"""Errors about one named setting, worded with the parameter's name in the library and with the
command-line flag in the CLI."""

from __future__ import annotations

from collections.abc import Callable

_MARK = "\x1f"


def param(name: str) -> str:
    """``name`` marked as a parameter inside a :class:`SettingError` message: shown as the name
    itself from Python, and as the matching flag (``--name``) by the command line."""
    return f"{_MARK}{name}{_MARK}"


class SettingError(ValueError):
    """A setting with a bad value; the message names the parameters involved (see :func:`param`)."""

    def render(self, spell: Callable[[str], str] = str) -> str:
        """The message with each marked parameter written as ``spell(name)``."""
        parts = str(self.args[0]).split(_MARK)
        return "".join(spell(part) if index % 2 else part for index, part in enumerate(parts))

    def __str__(self) -> str:
        return self.render()


def at_least(name: str, value, minimum) -> None:
    """A :class:`SettingError` unless ``value`` is an integer of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingError(f"{param(name)} must be an integer of at least {minimum}, got {value!r}")


def one_or_range(value, name: str, check):
    """``check(value)`` for one value, or ``(check(low), check(high))`` for a ``(low, high)`` pair
    with ``low < high``; a :class:`SettingError` naming ``name`` otherwise."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise SettingError(f"{param(name)} must be one value or (low, high), got {value!r}")
        low, high = (check(v) for v in value)
        if not low < high:
            raise SettingError(f"{param(name)} range (low, high) needs low < high, got {tuple(value)}")
        return (low, high)
    return check(value)
