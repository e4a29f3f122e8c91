"""The one exception type for mistakes a user can fix (bad config, impossible grammar, ...).

The CLI prints its message without a traceback and exits with code 2.
"""


class UserError(Exception):
    """Raised for input the user can correct; the message says what to change."""
