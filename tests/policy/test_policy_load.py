"""load_policy / parse_policy: one PolicyError listing every problem, each saying what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from airlock.errors import ConfigError, ExitCode
from airlock.policy import (
    MAX_POLICY_BYTES,
    Policy,
    PolicyError,
    PolicyProblem,
    builtin_rule_ids,
    load_policy,
    parse_policy,
)


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "airlock.yaml")
    return [str(p) for p in caught.value.problems]


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def test_policy_error_is_a_config_error_with_the_usage_exit_code() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy("capture: 1")
    assert caught.value.exit_code == ExitCode.USAGE
    assert "airlock policy check" in caught.value.hint


def test_full_policy_is_read() -> None:
    policy = parse_policy(
        """
version: 1
capture: {exec: best_effort, pty: never}
mask:
  env: [DATABASE_PASSWORD, OPENAI_API_KEY]
  patterns:
    - {id: acme-token, regex: "acme_[A-Za-z0-9]{32}", max_len: 64, description: "ACME"}
  correlate: hmac
  builtin: false
environment:
  remove: [MY_ADMIN_TOKEN, "VAULT_*"]
  keep_masked_vars: false
"""
    )
    assert policy.capture.exec == "best_effort"
    assert policy.capture.pty == "never"
    assert policy.mask.env == ("DATABASE_PASSWORD", "OPENAI_API_KEY")
    assert policy.mask.patterns[0].id == "acme-token"
    assert policy.mask.patterns[0].max_len == 64
    assert policy.mask.patterns[0].description == "ACME"
    assert (policy.mask.correlate, policy.mask.builtin) == ("hmac", False)
    assert policy.environment.remove == ("MY_ADMIN_TOKEN", "VAULT_*")
    assert policy.environment.keep_masked_vars is False


def test_every_problem_is_listed_in_file_order_with_lines() -> None:
    found = problems("capture:\n  exec: always\nmask:\n  paterns: []\n  correlate: sha\nfoo: 1\n")
    assert found == [
        "airlock.yaml: capture.exec: must be one of: required, best_effort, off (line 2)",
        "airlock.yaml: mask.paterns: unknown key 'paterns'; did you mean 'patterns'? (line 4)",
        "airlock.yaml: mask.correlate: must be one of: none, hmac (line 5)",
        "airlock.yaml: foo: unknown key 'foo'; valid keys here: approvals, capture, environment, gateways, "
        "guardrail_defaults, guardrails, mask, network, sandbox, version (line 6)",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("captur: {}", "captur: unknown key 'captur'; did you mean 'capture'?"),
        ("capture: {pyt: auto}", "capture.pyt: unknown key 'pyt'; did you mean 'pty'?"),
        (
            "mask: {patterns: [{id: a, regex: a+, maxlen: 3}]}",
            "mask.patterns[0].maxlen: unknown key 'maxlen'; did you mean 'max_len'?",
        ),
        (
            "environment: {keep_masked: true}",
            "environment.keep_masked: unknown key 'keep_masked'; did you mean 'keep_masked_vars'?",
        ),
    ],
)
def test_unknown_keys_suggest_the_closest_valid_key(text: str, expected: str) -> None:
    assert only_problem(text).startswith(f"airlock.yaml: {expected}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("capture: {exec: requird}", "must be one of: required, best_effort, off; did you mean"),
        ("capture: {pty: allways}", "must be one of: auto, always, never; did you mean 'always'?"),
        ("mask: {correlate: hmac256}", "must be one of: none, hmac; did you mean 'hmac'?"),
        ("version: 2", "version: must be 1"),
        ("capture: {exec: true}", "must be one of: required, best_effort, off"),
    ],
)
def test_wrong_enum_values_list_the_allowed_ones(text: str, expected: str) -> None:
    assert expected in only_problem(text)


@pytest.mark.parametrize(
    ("text", "path", "expected"),
    [
        ("- capture", "", "the policy must be a mapping of sections"),
        ("just a string", "", "got a string"),
        ("capture: [exec]", "capture", "must be a mapping (key: value), got a list"),
        ("capture:", "capture", "must be a mapping (key: value), got nothing (null)"),
        ("mask: {env: A}", "mask.env", "must be a list, got a string"),
        ("mask: {env: [42]}", "mask.env[0]", "must be a string (quote it), got an integer"),
        ("mask: {builtin: yes}", "mask.builtin", "must be true or false, got a string"),
        ("mask: {builtin: 1}", "mask.builtin", "must be true or false, got an integer"),
        ("mask: {patterns: [{id: a}]}", "mask.patterns[0].regex", "required key 'regex'"),
        ("mask: {patterns: [{regex: a+}]}", "mask.patterns[0].id", "required key 'id'"),
        ("mask: {patterns: [{id: a, regex: ''}]}", "mask.patterns[0].regex", "must not be empty"),
        (
            "mask: {patterns: [{id: a, regex: a+, max_len: 0}]}",
            "mask.patterns[0].max_len",
            "must be at least 1",
        ),
        ("mask: {patterns: [{id: a, regex: a+, max_len: '9'}]}", "mask.patterns[0]", "an integer"),
        ("mask: {patterns: [{id: a, regex: a+, max_len: 1e9}]}", "mask.patterns[0]", "an integer"),
        (
            "mask: {patterns: [{id: a, regex: a+, max_len: 70000}]}",
            "mask.patterns[0]",
            "at most 65536",
        ),
    ],
)
def test_shape_problems_say_what_is_expected(text: str, path: str, expected: str) -> None:
    problem = only_problem(text)
    assert problem.startswith(f"airlock.yaml: {path}")
    assert expected in problem


def test_yaml_one_point_one_words_stay_words() -> None:
    policy = parse_policy("capture: {exec: off}")
    assert policy.capture.exec == "off"
    assert "must be true or false" in only_problem("environment: {keep_masked_vars: no}")


# ---- regexes ----------------------------------------------------------------------------------


def test_invalid_regex_names_the_rule_and_re2s_complaint(capfd: pytest.CaptureFixture[str]) -> None:
    problem = only_problem("mask:\n  patterns:\n    - {id: acme, regex: 'acme_(x'}\n")
    assert problem.startswith("airlock.yaml: mask.patterns[0].regex: not a valid RE2 regex:")
    assert "missing )" in problem
    assert problem.endswith("(line 3)")
    assert capfd.readouterr().err == ""  # RE2's own logging is off


@pytest.mark.parametrize("regex", [r"(?=x)x", r"(a)\1", r"(?<=a)b"])
def test_regex_features_re2_lacks_are_refused(regex: str) -> None:
    assert "not a valid RE2 regex" in only_problem(
        f"mask: {{patterns: [{{id: r, regex: '{regex}'}}]}}"
    )


@pytest.mark.parametrize("regex", ["a*", "x|", "(abc)?", r"\b", "^", "$", "[a-z]{0,3}", r"\s*"])
def test_regexes_that_match_the_empty_string_are_refused(regex: str) -> None:
    text = f"mask: {{patterns: [{{id: r, regex: '{regex}'}}]}}"
    assert "can match the empty string" in only_problem(text)


@pytest.mark.parametrize("regex", ["a+", r"ghp_[A-Za-z0-9]{36}", r"\bkey=\w+", "(?i)secret-[0-9]+"])
def test_good_regexes_are_accepted(regex: str) -> None:
    policy = parse_policy(f"mask: {{patterns: [{{id: r, regex: '{regex}'}}]}}")
    assert policy.mask.patterns[0].regex == regex


def test_rule_ids_must_be_unique() -> None:
    text = "mask: {patterns: [{id: a, regex: a+}, {id: b, regex: b+}, {id: a, regex: c+}]}"
    assert "rule ids must be unique; used more than once: a" in only_problem(text)


@pytest.mark.parametrize("rule_id", ["builtin.x", "airlock.env"])
def test_reserved_rule_prefixes_are_refused(rule_id: str) -> None:
    text = f"mask: {{patterns: [{{id: '{rule_id}', regex: a+}}]}}"
    assert "reserved for a built-in rule" in only_problem(text)


def test_every_builtin_masking_rule_id_is_reserved() -> None:
    from airlock.mask.rules import BUILTIN_RULES

    assert builtin_rule_ids() == {rule.id for rule in BUILTIN_RULES}
    assert "jwt" in builtin_rule_ids()
    for rule_id in sorted(builtin_rule_ids()):
        text = f"mask: {{patterns: [{{id: '{rule_id}', regex: a+}}]}}"
        assert "reserved for a built-in rule" in only_problem(text)


@pytest.mark.parametrize("rule_id", ["Upper", "-dash", "has space", "env:X", "a" * 65])
def test_badly_shaped_rule_ids_are_refused(rule_id: str) -> None:
    text = f"mask: {{patterns: [{{id: '{rule_id}', regex: a+}}]}}"
    assert "must be 1-64 of a-z 0-9" in only_problem(text)


# ---- environment names ------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["1ABC", "MY-VAR", "A B", ""])
def test_bad_env_names_are_refused(entry: str) -> None:
    assert "not an environment variable name" in only_problem(f"mask: {{env: ['{entry}']}}")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("*", "would remove every variable"),
        ("A*B", "at the end"),
        ("*_TOKEN", "at the end"),
        ("A**", "at the end"),
    ],
)
def test_remove_globs_only_trail(entry: str, expected: str) -> None:
    assert expected in only_problem(f"environment: {{remove: ['{entry}']}}")


def test_duplicate_names_are_refused() -> None:
    assert "listed more than once: A" in only_problem("mask: {env: [A, B, A]}")
    assert "listed more than once: V_*" in only_problem("environment: {remove: ['V_*', 'V_*']}")


def test_a_value_pasted_as_a_name_is_refused_without_echoing_it() -> None:
    problem = only_problem("mask:\n  env:\n    - DATABASE_PASSWORD=hunter2-correct-horse\n")
    assert "looks like NAME=value" in problem
    assert "hunter2" not in problem
    assert problem.startswith("airlock.yaml: mask.env[0]:")


_SECRETISH = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=8, max_size=40
).map(lambda s: "S3CR3T" + s)
_PLACES = [
    "mask: {{env: [{v}]}}",
    "mask: {{builtin: {v}}}",
    "mask: {{correlate: {v}}}",
    "capture: {{exec: {v}}}",
    "capture: {{pty: {v}}}",
    "environment: {{remove: [{v}]}}",
    "environment: {{keep_masked_vars: {v}}}",
    "mask: {{patterns: [{{id: a, regex: a+, max_len: {v}}}]}}",
    "version: {v}",
    "mask: {{env: [A], other: {v}}}",
]


@settings(max_examples=200, deadline=None)
@given(value=_SECRETISH, place=st.sampled_from(_PLACES))
def test_no_value_is_ever_echoed_in_a_problem(value: str, place: str) -> None:
    text = place.format(v=_yaml_quote(value))
    try:
        parse_policy(text, "airlock.yaml")
    except PolicyError as exc:
        rendered = exc.explain() + repr(exc) + repr(exc.problems)
    else:
        rendered = ""
    assert "S3CR3T" not in rendered


def _yaml_quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
    return f'"{escaped}"'


# ---- YAML -------------------------------------------------------------------------------------


def test_yaml_syntax_errors_give_line_and_column() -> None:
    problem = only_problem("capture:\n  exec: required\n pty: auto\n")
    assert problem.startswith("airlock.yaml: line 3, column")
    assert "YAML syntax error" in problem


def test_unclosed_flow_sequence() -> None:
    assert "YAML syntax error" in only_problem("mask: {env: [A, B}\n")


def test_duplicate_keys_are_an_error_with_the_line_of_the_second() -> None:
    problem = only_problem("mask: {env: [A]}\ncapture: {}\nmask: {}\n")
    assert (
        problem == "airlock.yaml: line 3, column 1: YAML error: key 'mask' appears twice; keep one"
    )


def test_merge_keys_are_not_duplicates() -> None:
    policy = parse_policy("capture: {<<: {exec: off, pty: always}, pty: never}\n")
    assert (policy.capture.exec, policy.capture.pty) == ("off", "never")


def test_several_documents_are_refused() -> None:
    assert "YAML" in only_problem("capture: {}\n---\nmask: {}\n")


# ---- files ------------------------------------------------------------------------------------


def test_load_policy_reads_a_file_and_names_it(tmp_path: Path) -> None:
    path = tmp_path / "airlock.yaml"
    path.write_text("capture: {pty: never}\n", encoding="utf-8")
    assert load_policy(path).capture.pty == "never"
    path.write_text("capture: {pty: nope}\n", encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}: capture.pty: must be one of")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}: cannot read the policy file (No such file or directory)"
    assert "--policy" in caught.value.hint


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path)


def test_path_through_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(PolicyError, match=r"cannot read the policy file \(Not a directory\)"):
        load_policy(tmp_path / "file" / "airlock.yaml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "airlock.yaml"
    path.write_bytes(b"mask: {env: [A]}\n# \xff\xfe\n")
    with pytest.raises(PolicyError, match=r"not UTF-8 text \(bad byte at offset 19\)"):
        load_policy(path)


def test_too_large(tmp_path: Path) -> None:
    path = tmp_path / "airlock.yaml"
    path.write_bytes(b"#" * (MAX_POLICY_BYTES + 1))
    with pytest.raises(PolicyError, match="larger than 1 MiB"):
        load_policy(path)


def test_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    path = tmp_path / "airlock.yaml"
    path.write_bytes(b"")
    assert load_policy(path).capture.exec == "required"


def test_problem_rendering() -> None:
    assert str(PolicyProblem("f.yaml", "a.b", "bad", 3)) == "f.yaml: a.b: bad (line 3)"
    assert str(PolicyProblem("f.yaml", "", "bad")) == "f.yaml: bad"
    assert str(PolicyProblem("f.yaml", "", "bad", 3, 7)) == "f.yaml: line 3, column 7: bad"


# ---- odd YAML and fuzzing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1: 2", "line 1, column 1: YAML error: keys must be words"),
        ("~: x", "keys must be words"),
        ("capture: {[a]: 1}", "line 1, column 11: YAML error: keys must be words"),
        ("capture: !!binary aGVsbG8=", "YAML tag 'binary' is not allowed here"),
        ("mask: {env: !!set {A: null}}", "YAML tag 'set' is not allowed here"),
        ("!!python/object:os.system {}", "could not determine a constructor"),
        ("version: 1.0", "version: must be the integer 1"),
        ("version: true", "version: must be the integer 1"),
        ("version: '1'", "version: must be 1, written without quotes"),
    ],
)
def test_odd_yaml_is_refused_clearly(text: str, expected: str) -> None:
    assert expected in only_problem(text)


def test_dates_stay_text() -> None:
    policy = parse_policy("mask: {patterns: [{id: a, regex: a+, description: 2024-01-01}]}")
    assert policy.mask.patterns[0].description == "2024-01-01"


_KEYS = st.sampled_from(
    ["version", "capture", "exec", "pty", "mask", "env", "patterns", "id", "regex", "max_len",
     "description", "correlate", "builtin", "environment", "remove", "keep_masked_vars", "x"]
)  # fmt: skip
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["required", "off", "auto", "hmac", "a+", "A", "V_*", "a*", "(", "1"]),
)
_TREES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=200, deadline=None)
@given(tree=st.dictionaries(_KEYS, _TREES, max_size=5))
def test_any_document_gives_a_policy_or_a_policy_error(tree: dict[str, object]) -> None:
    text = yaml.safe_dump(tree, allow_unicode=True)
    try:
        outcome: Policy | PolicyError = parse_policy(text, "fuzz.yaml")
    except PolicyError as exc:
        outcome = exc
    if isinstance(outcome, Policy):
        assert outcome.version == 1
    else:
        assert outcome.problems
        assert all(str(p).startswith("fuzz.yaml: ") for p in outcome.problems)


def test_paths_through_the_gateway_union_read_like_the_file() -> None:
    text = (
        "gateways:\n"
        "  - name: forge\n"
        "    kind: http\n"
        "    listen: 127.0.0.1:0\n"
        "    upstream: https://api.github.com\n"
        "    record_bodys: 100\n"
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "airlock.yaml")
    [problem] = caught.value.problems
    assert problem.path == "gateways[0].record_bodys"
    assert problem.line == 6
    assert "did you mean 'record_bodies'?" in problem.message
