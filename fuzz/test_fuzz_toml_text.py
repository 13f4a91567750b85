"""Fuzzes the TOML writer of `llmrelay import-config` (`llmrelay.importing.toml_text.document_text`).

The writer lays a config out by hand (headers for tables, `[[...]]` or inline lists for lists of
tables, quoted keys and escaped strings where needed), so every layout decision is a chance to write a
file that means something else than the data it was given. Documents are nested dicts of every value
TOML holds: strings with quotes, backslashes, control characters and any unicode, 64-bit integers,
finite floats, booleans, lists of scalars, nested tables and lists of tables (short ones that stay
inline, long ones and nested ones that get headers), under bare and quoted keys. The property: the text
read back by tomllib equals the document. (The writer leaves None out and writes nan and inf, which
compare unequal, so neither is generated.) Comments given for every table must not change the data.
"""

from __future__ import annotations

import tomllib
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from llmrelay.importing.toml_text import document_text

KEYS = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),  # bare keys
    st.text(max_size=10),  # quoted keys: dots, spaces, quotes, control characters, the empty key
)
STRINGS = st.text(max_size=40)
SCALARS = st.one_of(
    STRINGS,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
SCALAR_LISTS = st.lists(SCALARS, max_size=5)


def _tables(children: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(KEYS, children, max_size=5)


VALUES = st.recursive(
    st.one_of(SCALARS, SCALAR_LISTS),
    lambda children: st.one_of(
        _tables(children),  # a nested table
        st.lists(_tables(children), min_size=1, max_size=4),  # a list of tables
    ),
    max_leaves=30,
)
DOCUMENTS = _tables(VALUES)


def _comments_for_every_table(data: dict[str, Any], path: str = "") -> dict[str, str]:
    """A comment (with a newline inside, and a `#`) for every table and list item of `data`."""
    comments: dict[str, str] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else key
        if isinstance(value, dict):
            comments[dotted] = f"table {dotted}\n# with a second line"
            comments.update(_comments_for_every_table(value, dotted))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for index, item in enumerate(value):
                comments[f"{dotted}[{index}]"] = f"item {index} of {dotted}"
                comments.update(_comments_for_every_table(item, dotted))
    return comments


@given(DOCUMENTS)
@example({"a": [{"b": {"c": 1}}, {"d": [{"e": "x"}]}]})  # list items holding a table and a list of tables
@example({"": {"\x00\n\"\\": ["\x7f", "\u2028", "é"]}, "a.b": {"c": []}})  # quoted keys, escapes, an empty list
@example({"t": [{"s": "x" * 120}]})  # an item too long to stay inline
@example({"f": [1e16, -0.0, 5e-324, 1.7976931348623157e308], "i": [-(2**63), 2**63 - 1]})
def test_document_text_reads_back_as_the_same_data(document: dict[str, Any]) -> None:
    text = document_text(document)
    assert tomllib.loads(text) == document, text


@given(DOCUMENTS, st.text(max_size=30))
def test_comments_and_a_header_leave_the_data_alone(document: dict[str, Any], header: str) -> None:
    text = document_text(document, _comments_for_every_table(document), header=header)
    assert tomllib.loads(text) == document, text
