"""Prototypes built from their type names (``signatures._plain``, issue 24
item 4): a fresh isolated worker opened every export by running cffi's C
parser over its whole prototype, ~0.5 ms each; a prototype of plain type
names is now built from the types of its names.  It must give the very type
object the parser gives (identity is how prototypes are compared), and any
other text must reach the parser and its error, never a different type."""

from __future__ import annotations

import pytest

from hotload import SignatureError
from hotload._artifact import signatures
from hotload._artifact.signatures import ffi

PLAIN = [
    "int64_t(int64_t, int64_t)",
    "int64_t (int64_t,int64_t)",
    "int32_t(void)",
    "int32_t()",
    "void(const char *)",
    "char *(char *, int32_t)",
    "double(double, float, int8_t, uint8_t, int16_t, uint16_t, uint32_t, uint64_t)",
    "size_t(const int32_t *, size_t)",
    "const char *(void)",
    "void **(void *, unsigned int, long long)",
    "_Bool(bool)",
    "unsigned long(unsigned char)",
]


@pytest.mark.parametrize("text", PLAIN)
def test_a_plain_prototype_is_the_parsers_very_type(text: str) -> None:
    open_at = text.index("(")
    built = signatures._plain(text[:open_at], text[open_at + 1 : -1])
    assert built is not None
    assert built is ffi.typeof(f"{text[:open_at]}(*){text[open_at:]}")
    assert signatures.pointer_type(text) is built


@pytest.mark.parametrize(
    "text",
    [
        "int(int, ...)",  # variadic: refused
        "int(void, int)",  # void among parameters
        "int(no_such_t)",  # an unknown name
        "struct never_declared(int)",
        "int(;)",
        "int(int",
        "(int)",
        "int(int) extra",
        "int(__attribute__((x)) int)",
        "\x00(\x00)",
        "int(" + "int, " * 5000 + "...)",  # huge and variadic
    ],
)
def test_any_other_text_reaches_the_parser_and_its_error(text: str) -> None:
    with pytest.raises(SignatureError, match="plug.so: cannot parse the C signature of f"):
        signatures.parse(text, where="plug.so", function="f")


@pytest.mark.parametrize(
    "text",
    ["int(int a, int b)", "int(int[3])", "int32_t( int32_t , int32_t )", "int(int (*)(int))"],
)
def test_names_and_arrays_give_the_parsers_type(text: str) -> None:
    """A parameter name, an array or a function pointer goes the parser's
    way, or (a name cffi takes as a type name) gives the same type: never
    another one."""
    open_at = text.index("(")
    assert signatures.pointer_type(text) is ffi.typeof(f"{text[:open_at]}(*){text[open_at:]}")


def test_a_thousand_parameters_build_without_the_parser() -> None:
    text = "int64_t(" + ", ".join(["int32_t"] * 1000) + ")"
    built = signatures._plain("int64_t", text[8:-1])
    assert built is not None and len(built.args) == 1000
