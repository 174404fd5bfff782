"""Errors a user can act on. Each message says what is wrong, where, and what to do."""


class HLLMError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(HLLMError):
    """Input data is missing, malformed or unusable (names the file, column or row)."""


class ConfigError(HLLMError):
    """A preset, YAML file or --set override is invalid (names every bad key at once)."""


class BusyError(HLLMError):
    """Another process holds the directory this command would write (names it, and its pid)."""
