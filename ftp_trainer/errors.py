"""The one error the command turns into exit status 2 and a single sentence."""

from __future__ import annotations


class InputError(Exception):
    """A bad input: a missing file, a malformed line, a bad config, an unknown model, no examples.

    Its message is one sentence, printed as is on stderr without a traceback.
    """
