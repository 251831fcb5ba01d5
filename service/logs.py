"""Log lines that carry what a client sent."""

from __future__ import annotations


def _escape(char: str) -> str:
    code = ord(char)
    if char == "\\":
        return "\\\\"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(text: str) -> str:
    """Text from a request made safe for a log line: control and other
    non-printable characters (CR, LF, ESC, bidi overrides, line separators) as
    \\xNN, \\uNNNN or \\UNNNNNNNN, and the backslash doubled, so a client can neither
    forge a line nor send escape sequences to an operator's terminal."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)
