"""Exceptions that carry a message meant for the user (the CLI prints them without a traceback)."""


class M3AEError(Exception):
    """Base class for errors caused by user input: a bad file, a wrong option, a missing path."""


class DataError(M3AEError):
    """Bad input data. The message names the file and the line or record."""


class CheckpointError(M3AEError):
    """A checkpoint that cannot be read, or whose keys or shapes do not match the model."""
