"""The one exception a user's input earns: its message is a single line that names what to fix."""


class DebugInputError(ValueError):
    """Bad input to a magic (a missing script, an unknown step, a port in use...).

    The magics show the message as one line, never a traceback.
    """
