"""The one base class of errors a user can act on (bad params, a missing archive, a leaking split).

The CLI catches ``UserError`` and prints its message as one line. Each module defines its own subclass, also
deriving from the built-in error it stood for (``ValueError``, ``RuntimeError``), so the CLI needs to import none
of them: a DVC stage's imports stay the ones its work needs.
"""


class UserError(Exception):
    """An error whose message, one line meant for a person, is all a user needs to see."""
