"""Errors a user can cause. The CLI turns them into one line and an exit code."""


class GraphoptError(Exception):
    """A problem with the user's input: bad file, bad graph, bad pipeline spec.

    The message is meant to be shown to the user as one line.
    """

    exit_code = 2


class VerificationError(GraphoptError):
    """A pass changed what the model computes beyond its declared contract."""

    exit_code = 1
