"""The library's one exception type for bad input."""


class InvalidInputError(ValueError):
    """Raised when an input (file, array, mask, parameter) cannot be used.

    The message names the offending file or argument, says what is wrong and, where it
    helps, what to do about it.
    """
