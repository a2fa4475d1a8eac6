"""The one exception type that carries a user-facing, one-line message."""


class MedcoreError(Exception):
    """A problem with the user's input (a file, an option, a checkpoint).

    The message is a single line that names the offending file or option; the CLI prints it
    as ``Error: <message>`` and exits with status 2, without a traceback.
    """
