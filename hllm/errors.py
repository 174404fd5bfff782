"""Errors a user can act on. Each message says what is wrong, where, and what to do."""


class HLLMError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(HLLMError):
    """Input data is missing, malformed or unusable (names the file, column or row)."""


class ConfigError(HLLMError):
    """A preset, YAML file or --set override is invalid (names every bad key at once)."""


class BusyError(HLLMError):
    """Another process holds the directory this command would write (names it, and its pid)."""


class SaveError(HLLMError):
    """Writing results failed part-way (disk full, I/O); says what was kept as it was."""


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for one-line reports of a library's exception."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
