"""The package version, on the lowest floor (importable from anywhere without a circle)."""

__version__ = "0.1.0"
