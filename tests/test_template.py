from __future__ import annotations

import pytest

from agent import template


def test_fields_are_replaced_inside_the_argv_element_where_they_stand() -> None:
    words = [template.parse(w) for w in ["process.py", "--in={input}.fa", "{id}"]]
    values = template.token_values("t1", {"input": "genome 1; rm -rf ~"}, {})
    assert [template.render(w, values) for w in words] == ["process.py", "--in=genome 1; rm -rf ~.fa", "t1"]


def test_double_braces_are_literal() -> None:
    assert template.render(template.parse("{{x}} {id}"), {"id": "7"}) == "{x} 7"


@pytest.mark.parametrize("text", ["{", "}", "{a b}", "{}", "x{input", "{0.__class__}x}"])
def test_bad_placeholders_are_refused_with_their_position(text: str) -> None:
    with pytest.raises(ValueError, match="position"):
        template.parse(text)


def test_a_missing_field_names_itself() -> None:
    with pytest.raises(template.MissingField, match="no field 'sample'"):
        template.render(template.parse("{sample}"), {"id": "t"})


def test_a_nul_byte_cannot_reach_exec() -> None:
    with pytest.raises(template.UnsafeValue, match="NUL"):
        template.render(template.parse("{input}"), {"input": "a\0b"})


def test_non_string_values_render_as_json() -> None:
    values = template.token_values("t", {"n": 3, "flag": True, "xs": [1, 2], "none": None}, {})
    assert (values["n"], values["flag"], values["xs"], values["none"]) == ("3", "true", "[1,2]", "")


def test_environment_has_every_field_the_id_and_cache_paths() -> None:
    env = template.task_environment(
        "t9", {"input": "x", "sample-name": "s", "bad": "a\0b"}, {"ref.db": "/c/r"}
    )
    assert env == {
        "PILOT_TOKEN_INPUT": "x",
        "PILOT_TOKEN_SAMPLE_NAME": "s",
        "PILOT_TOKEN_ID": "t9",
        "PILOT_CACHE_REF_DB": "/c/r",
    }
