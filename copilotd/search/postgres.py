"""Search on the PostgreSQL store: the documented query syntax turned into a ``tsquery``.

The entries are written by the store with the events they index
(``copilotd.store.postgres_search``), so there is nothing to follow here: a
search reads the database as every daemon sees it. What this module owns is
the query language: the subset of SQLite FTS5 syntax the client documents
(words, all of which must match, ``"a phrase"``, ``OR``, ``NOT``, ``AND``,
parentheses, ``prefix*``) parsed here and written as ``to_tsquery`` input
in which every word is a quoted lexeme, so nothing a user types is read as
tsquery syntax. A query the SQLite index would refuse is refused here too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

from copilotd.events import SessionEvent
from copilotd.search.index import (
    SNIPPET_TOKENS,
    Hit,
    InvalidSearchQueryError,
    SearchFilter,
    check_query,
    page_token,
    token_offset,
)
from copilotd.search.indexer import DEFAULT_SEARCH_PAGE_SIZE
from copilotd.sessions.validation import page_size
from copilotd.store import StoreChange
from copilotd.store.postgres_search import normalise

if TYPE_CHECKING:
    from copilotd.store.postgres_store import PostgresStore

# FTS5 barewords: ASCII letters, digits and "_", and every non-ASCII character.
_BAREWORD: Final = r"[A-Za-z0-9_\x80-\U0010ffff]+"
_TOKEN: Final = re.compile(
    rf'\s*(?:"(?P<phrase>(?:[^"]|"")*)"|(?P<word>{_BAREWORD})|(?P<symbol>\S))', re.DOTALL
)
# Parentheses nested deeper are refused (the parser recurses per level).
_MAX_DEPTH: Final = 50
_OPERATORS: Final = frozenset({"OR", "AND", "NOT", "NEAR"})


class _Token(NamedTuple):
    kind: str  # "phrase", "word", an operator, or a symbol: "(", ")", "*", ...
    text: str


def _tokens(query: str) -> list[_Token]:
    found: list[_Token] = []
    position = 0
    while position < len(query):
        match = _TOKEN.match(query, position)
        if match is None:  # only blanks remain
            break
        position = match.end()
        if match["phrase"] is not None:
            found.append(_Token("phrase", match["phrase"].replace('""', '"')))
        elif match["word"] is not None:
            word = match["word"]
            found.append(_Token(word if word in _OPERATORS else "word", word))
        else:
            found.append(_Token(match["symbol"], match["symbol"]))
    return found


class _Parser:
    """FTS5's grammar, by precedence: ``OR`` < ``AND`` (or nothing) < ``NOT``."""

    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens = _tokens(query)
        self.position = 0
        self.depth = 0

    def parse(self) -> str:
        expression = self._or()
        if self.position < len(self.tokens):
            raise _invalid(self.query, f"unexpected {self.tokens[self.position].text!r}")
        return expression

    def _peek(self) -> str | None:
        return self.tokens[self.position].kind if self.position < len(self.tokens) else None

    def _or(self) -> str:
        left = self._and()
        while self._peek() == "OR":
            self.position += 1
            left = f"({left} | {self._and()})"
        return left

    def _and(self) -> str:
        left = self._not()
        while self._peek() in ("AND", "phrase", "word", "(", "NEAR"):
            if self._peek() == "AND":
                self.position += 1
            left = f"({left} & {self._not()})"
        return left

    def _not(self) -> str:
        left = self._primary()
        while self._peek() == "NOT":
            self.position += 1
            left = f"({left} & !{self._primary()})"
        return left

    def _primary(self) -> str:
        kind = self._peek()
        if kind is None:
            raise _invalid(self.query, "it ends where a word or phrase should follow")
        token = self.tokens[self.position]
        self.position += 1
        if kind == "(":
            self.depth += 1
            if self.depth > _MAX_DEPTH:
                raise _invalid(self.query, f"parentheses nest deeper than {_MAX_DEPTH}")
            inner = self._or()
            self.depth -= 1
            if self._peek() != ")":
                raise _invalid(self.query, "a parenthesis is not closed")
            self.position += 1
            return inner
        if kind == "NEAR":
            raise _invalid(
                self.query,
                "NEAR is not supported on the PostgreSQL store; use a phrase, or both words",
            )
        if kind == '"':
            raise _invalid(self.query, "unterminated string: a double quote is not closed")
        if kind not in ("phrase", "word"):
            raise _invalid(self.query, f"unexpected {token.text!r}")
        prefix = self._peek() == "*"
        if prefix:
            self.position += 1
        return _phrase(self.query, token.text, prefix=prefix)


def _phrase(query: str, text: str, *, prefix: bool) -> str:
    # Split as the entries' vectors are: ASCII punctuation is a space there.
    words = normalise(text).split()
    if not words:
        raise _invalid(query, f"{text!r} holds no word to look for")
    # No quote or backslash survives the translation, so each lexeme is a plain
    # quoted string: to_tsquery reads it as text, never as an operator.
    lexemes = [f"'{word}'" for word in words]
    if prefix:
        lexemes[-1] += ":*"
    return lexemes[0] if len(lexemes) == 1 else f"({' <-> '.join(lexemes)})"


def _invalid(query: str, reason: str) -> InvalidSearchQueryError:
    return InvalidSearchQueryError(
        f"query {query!r} is not valid FTS5 syntax ({reason}); put words with "
        'punctuation in double quotes ("config.toml"), and use OR, NOT, "a phrase" '
        "and prefix* as operators"
    )


def _cut_marks(snippet: str, text: str) -> str:
    """The snippet with "…" where it cuts the text, as FTS5's snippet() has."""
    plain, whole = snippet.replace("[", "").replace("]", ""), text.replace("[", "").replace("]", "")
    start = whole.find(plain)
    if start < 0:  # the headline reflowed it: leave it be
        return snippet
    before = "…" if whole[:start].strip() else ""
    after = "…" if whole[start + len(plain) :].strip() else ""
    return f"{before}{snippet}{after}"


def tsquery_text(query: str) -> str:
    """``to_tsquery`` input for a query in the documented syntax; raises
    ``InvalidSearchQueryError`` for an empty or malformed one."""
    check_query(query)
    return _Parser(query).parse()


class PostgresSearch:
    """Searches the PostgreSQL store's own full-text index. It has the indexer's
    methods, so the daemon wires either; those that feed an index do nothing
    here: the store indexes in its writing transaction."""

    def __init__(self, store: PostgresStore) -> None:
        self._store = store

    def observe(self, session_id: str, events: Sequence[SessionEvent]) -> None:
        del session_id, events

    def reindex(self, session_id: str) -> None:
        del session_id

    def changed(self, change: StoreChange | None) -> None:
        del change

    def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def search(
        self, search: SearchFilter, requested_page_size: int, token: str
    ) -> tuple[list[Hit], str]:
        """A page of hits and the next page's token ("" after the last page)."""
        tsquery = tsquery_text(search.query)
        offset = token_offset(search, token)
        limit = page_size(requested_page_size, DEFAULT_SEARCH_PAGE_SIZE)
        # In a thread: a common word ranks every entry that holds it.
        found = await asyncio.to_thread(
            self._store.search_text,
            tsquery,
            session_id_prefix=search.session_id_prefix,
            since_ns=search.since_ns,
            until_ns=search.until_ns,
            include_rewound=search.include_rewound,
            limit=limit + 1,  # one more tells whether another page follows
            offset=offset,
            snippet_words=SNIPPET_TOKENS,
        )
        hits = [
            # Negated: the API's rank is lower-is-better, as FTS5's bm25.
            Hit(
                session_id=row.session_id,
                sequence=row.sequence,
                event_type=row.event_type,
                event_time_ns=row.event_time_ns,
                snippet=_cut_marks(row.snippet, row.text),
                rank=-row.rank,
                rewound=row.rewound,
            )
            for row in found
        ]
        more = len(hits) > limit
        return hits[:limit], page_token(search, offset + limit) if more else ""
