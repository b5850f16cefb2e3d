"""The error type for bad user input: the CLI prints its message as one line and exits with 2."""


class InputError(Exception):
    """Bad input (scenario file, CLI argument, data file): one line naming the file, the field and what was expected."""
