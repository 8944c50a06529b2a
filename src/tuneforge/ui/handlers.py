"""Event handlers show a TuneforgeError as one readable message in the page, not a traceback.

@shows_errors
def load(name): ...          # a ModelError becomes a gr.Error toast with its sentence
"""

from __future__ import annotations

import functools
import inspect

from tuneforge.errors import TuneforgeError


def shows_errors(fn):
    """Turn TuneforgeError (bad input, refused paths, a job already running) into gr.Error with its message;
    the server log keeps tracebacks for real faults only."""
    import gradio as gr

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except TuneforgeError as error:
                raise gr.Error(str(error), print_exception=False) from None

        return generator

    @functools.wraps(fn)
    def plain(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TuneforgeError as error:
            raise gr.Error(str(error), print_exception=False) from None

    return plain
