"""The errors a dataset loader raises when its data is missing or unreadable."""


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not where it was looked for; the message says where to put it."""


class DatasetFormatError(ValueError):
  """A dataset file exists but is not in the expected format."""


class DataConfigError(ValueError):
  """A config.data field names no dataset or source, or a combination that does not
  exist; the message names the field and the valid values."""
