"""The one exception a user can cause: its message is a single readable line."""


class BertdexError(Exception):
    """A problem with input, options or an index that the user can fix.

    The message names the file and line, the option, or the folder at fault;
    the CLI prints it as one line on stderr and exits non-zero.
    """
