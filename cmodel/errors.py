"""The one exception type for bad ``.cmz`` input (spec: "Errors")."""


class CmzError(ValueError):
    """A ``.cmz`` file, or an input to the encoder, is not what it must be.

    The message names what was expected and what was found.  ``check`` is the
    name of the failed check from the spec's ordered check list (for example
    ``"magic"`` or ``"segment_crc"``), so callers can branch on it without
    parsing the message.
    """

    def __init__(self, check: str, message: str):
        super().__init__(message)
        self.check = check
