"""The errors a dataset loader raises when its data is missing or unreadable."""


class DatasetNotFoundError(FileNotFoundError):
  """The dataset is not where it was looked for; the message says where to put it."""


class DatasetFormatError(ValueError):
  """A dataset file exists but is not in the expected format."""
