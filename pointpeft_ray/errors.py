"""Exception types. Each one is a ValueError so callers that only know the
standard library still catch bad input, while the CLI can print them cleanly."""


class PointPEFTError(ValueError):
    """Base class for every error the package raises on bad input."""


class ConfigError(PointPEFTError):
    """A config value, key or combination is invalid."""


class CheckpointError(PointPEFTError):
    """A checkpoint cannot be read or does not fit the model."""


class MemoryBankError(PointPEFTError):
    """A memory bank is missing, stale, or does not fit the model."""


class DataFormatError(PointPEFTError):
    """A dataset file or directory is missing, malformed, or holds bad values."""


class ResultsError(PointPEFTError):
    """A results table cannot be built, written or read (bad record, missing file, wrong
    schema version)."""


class DamagedRecordError(ResultsError):
    """A results table exists but cannot be read: it is left as it is (never replaced
    silently) until the user repairs it."""


class WriteError(PointPEFTError, OSError):
    """A file could not be written (a full disk, no permission): the previous version is kept."""
