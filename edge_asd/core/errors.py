"""The one exception type that reaches users as a message instead of a traceback.

Every package (``trainer``, ``engines``, ``edge_asd``) raises ``UserError`` subclasses for
problems the user can fix: a bad config key, a corrupt WAV, a missing device, a stale
engine. The message names the thing and says what to do; the CLI prints it and exits 2.
It lives here because ``trainer`` is the bottom of the dependency chain.
"""


class UserError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole message shown to them."""
