"""Errors a user can fix: the stages print them as one message, without a traceback."""


class PipelineError(Exception):
    """Base class: something the user can fix (a param, a file, a data source)."""


class ParamsError(PipelineError):
    """A value in params.yaml is missing, of the wrong type or out of range."""


class DataError(PipelineError):
    """A data file is missing, corrupt or not what it claims to be."""


class SourceError(PipelineError):
    """No data source could deliver MNIST."""


class TrainingError(PipelineError):
    """Training could not run as configured (e.g. a DDP process that never joined)."""
