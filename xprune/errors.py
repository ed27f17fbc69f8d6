"""One error type for everything a user can get wrong; the CLI turns it into one line on stderr and exit 2."""


class XpruneError(Exception):
    """Bad input or an unusable environment: a message meant for the user, no traceback."""
