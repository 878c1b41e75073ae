"""Whitespace outside the strings of a JSON text (the tests of structured outputs' disable_any_whitespace)."""


def spaced(text):
    """True when `text` has a space, tab or line break outside its JSON strings."""
    inside = esc = False
    for ch in text:
        if inside:
            esc, inside = (not esc and ch == "\\"), (inside if esc or ch != '"' else False)
        elif ch == '"':
            inside = True
        elif ch in " \t\n\r":
            return True
    return False
