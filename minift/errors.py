class MiniftError(Exception):
    """A problem with the user's input (files, options, data), explained in words.

    The CLI prints the message and exits non-zero instead of showing a traceback;
    library callers can catch it. Bugs stay ordinary exceptions.
    """
