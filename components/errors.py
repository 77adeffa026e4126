"""Errors a user can act on: the CLI prints them without a stack trace."""


class UserError(Exception):
    """A mistake in the user's input (a path, a config, a data file): the message says what and how to fix it."""
