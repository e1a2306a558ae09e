"""The exceptions a user can cause: each message is a single readable line, each kind its own type.

`BertdexError` is the base; the index-folder conditions below are subclasses so that callers (the
CLI's exit status, the server's HTTP status) choose by type, never by matching message text. Each
carries the CLI exit status and the HTTP status it maps to. This module imports nothing heavy.
"""


class BertdexError(Exception):
    """A problem with input, options or an index that the user can fix.

    The message names the file and line, the option, or the folder at fault;
    the CLI prints it as one line on stderr and exits non-zero.
    """

    exit_code = 1  # bad input or options
    http_status = 422


class UsageError(BertdexError):
    """An option or argument out of its range or naming what does not exist (-k 0, --where nofield=x):
    exit 2, as a usage error, so that 1 keeps meaning "no good answer" for `bertdex query`."""

    exit_code = 2


class InputUnreadable(BertdexError):
    """An input file cannot be read as what it claims to be: missing, a folder, not gzip, not UTF-8."""

    exit_code = 3


class IndexMissing(BertdexError):
    """The folder does not exist or holds no bertdex index."""

    exit_code = 4
    http_status = 404


class IndexLocked(BertdexError):
    """Another writer holds the index's write lock."""

    exit_code = 5
    http_status = 409


class IndexReadOnly(BertdexError):
    """The index folder (or its files) cannot be written: reads work, writes are refused."""

    exit_code = 6
    http_status = 503


class IndexDamaged(BertdexError):
    """A file of the index fails a check (size, header, checksum, counts); `bertdex repair` may fix it."""

    exit_code = 7
    http_status = 503


class OptionOutOfRange(UsageError):
    """An option's value is outside its range (indexer.options): a usage error, never silently changed."""

    exit_code = 2
    http_status = 422


class DiskFull(BertdexError):
    """The index's file system has no space left: the command committed nothing, the index is as it was."""

    exit_code = 8
    http_status = 507
