"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (a missing path, an empty corpus, a spec that changed under a study)."""
