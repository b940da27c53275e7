"""The one error type users see: a problem they can fix, printed as one line without a traceback.

Kept free of heavy imports (torch) so that params validation starts fast.
"""


class PipelineError(Exception):
    """A problem the user can fix; stages print it as one clear message, without a traceback."""
