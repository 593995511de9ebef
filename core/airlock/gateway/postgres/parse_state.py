"""The session settings that change how PostgreSQL reads SQL text, and the rule that keeps the
gateway's reading equal to the server's. Sans-I/O.

The gateway judges SQL with libpg_query, which reads it as a server with
``standard_conforming_strings = on`` and a UTF-8 client would. Three settings make the server
read the same bytes differently:

- ``standard_conforming_strings = off``: ``\\`` escapes inside plain ``'…'`` literals, so
  ``SELECT 'x\\''; DELETE FROM t; --'`` is one SELECT to us and a SELECT plus a DELETE to the
  server.
- a client encoding whose multibyte characters can end in an ASCII byte (SJIS, BIG5, GBK, UHC,
  GB18030, JOHAB): the server sees one character where we see ``\\`` followed by a quote.
- ``backslash_quote = on`` together with such an encoding.

So statements that set these (``SET``, ``set_config()``, ``ALTER ROLE/DATABASE … SET``, an
``UPDATE pg_settings``) are denied by the built-in rule :data:`PARSE_STATE_RULE`, client startup
parameters asking for such an encoding are refused, and :class:`SessionState` follows what the
server reports (ParameterStatus) so that a change made where the gateway cannot see it (inside a
function) refuses every statement whose reading would depend on it.
"""

from __future__ import annotations

import re

from pglast import parser

__all__ = [
    "PARSE_STATE_RULE",
    "PARSING_SETTINGS",
    "SessionState",
    "depends_on_backslashes",
    "setting_changes_parsing",
    "unsafe_encoding",
]

PARSE_STATE_RULE = "airlock.builtin.parse_state"
PARSING_SETTINGS = frozenset({"standard_conforming_strings", "backslash_quote", "client_encoding"})

# PostgreSQL's client-only encodings whose second byte can be an ASCII byte (encnames.c; names
# compared as PostgreSQL does: lower case, letters and digits only).
_UNSAFE_ENCODINGS = frozenset(
    {
        "sjis", "shiftjis", "mskanji", "win932", "windows932", "shiftjis2004",
        "big5", "win950", "windows950",
        "gbk", "win936", "windows936", "cp936",
        "uhc", "win949", "windows949",
        "gb18030", "johab",
    }
)  # fmt: skip
_TRUE = frozenset({"on", "true", "yes", "1", "t", "y"})
_ON_PREFIXES = ("on", "tr", "ye")  # PostgreSQL accepts unique prefixes of on/true/yes


def _clean(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def unsafe_encoding(name: str) -> bool:
    """True for a client encoding in which the server and the gateway would split text apart."""
    return _clean(name) in _UNSAFE_ENCODINGS


def _is_on(value: str) -> bool:
    value = value.strip().lower()
    return value in _TRUE or (len(value) > 1 and value.startswith(_ON_PREFIXES))


def setting_changes_parsing(name: str | None, value: str | None) -> bool:
    """True when setting ``name`` to ``value`` (None: RESET / DEFAULT) would make the server
    read SQL differently from the gateway. Names compare case-insensitively."""
    if name is None:
        return False
    name = name.strip().lower()
    if name == "standard_conforming_strings":
        return value is not None and not _is_on(value)
    if name == "backslash_quote":
        return value is not None and _is_on(value)
    if name == "client_encoding":
        return value is not None and unsafe_encoding(value)
    return False


def depends_on_backslashes(sql: str) -> bool:
    """True when ``sql`` has a plain ``'…'`` literal holding a backslash: its reading depends on
    ``standard_conforming_strings``."""
    if "\\" not in sql:
        return False
    try:
        tokens = parser.scan(sql)
    except Exception:  # unscannable: the parse fails too, and that path refuses
        return False
    return any(
        token.name == "SCONST"
        and sql[token.start] == "'"
        and "\\" in sql[token.start : token.end + 1]
        for token in tokens
    )


class SessionState:
    """What the server says about the settings that change parsing (from ParameterStatus)."""

    def __init__(self) -> None:
        self.standard_conforming_strings = "on"
        self.client_encoding = "UTF8"
        self.search_path: str | None = None
        self._safe = True  # both as the gateway reads SQL: the per-statement fast path

    def update(self, name: str, value: str) -> None:
        """Take a ParameterStatus (``name``, ``value``) into account."""
        if name == "standard_conforming_strings":
            self.standard_conforming_strings = value
        elif name == "client_encoding":
            self.client_encoding = value
        elif name == "search_path":
            self.search_path = value
        self._safe = _is_on(self.standard_conforming_strings) and not unsafe_encoding(
            self.client_encoding
        )

    def refuses(self, sql: str) -> str | None:
        """Why ``sql`` must be refused in this state (None: it reads the same to us and the
        server)."""
        if self._safe:
            return None
        if unsafe_encoding(self.client_encoding) and not sql.isascii():
            return f"client_encoding is {self.client_encoding}"
        if not _is_on(self.standard_conforming_strings) and depends_on_backslashes(sql):
            return "standard_conforming_strings is off"
        return None
