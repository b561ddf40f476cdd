"""The errors the command turns into an exit status and a single sentence, without a traceback."""

from __future__ import annotations


class InputError(Exception):
    """A bad input: a missing file, a malformed line, a bad config, an unknown model, no examples.

    Its message is one sentence, printed as is on stderr without a traceback.
    """


class JobBusy(Exception):
    """Another process is training the same job (exit status 75, "try again later")."""
