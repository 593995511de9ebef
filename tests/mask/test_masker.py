"""Masker behaviour: literals and encodings, run-time secrets, flush_idle, HMAC correlation,
policy patterns, errors, and the public API."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from urllib.parse import quote_plus

import pytest
from tests.mask.helpers import make, rand

import airlock.mask
from airlock.errors import ConfigError
from airlock.mask import Masker, MaskSettings, PatternRule, replacement

SECRET = "s3cr3t-" + rand(12)


def test_public_api_is_pinned() -> None:
    assert sorted(airlock.mask.__all__) == [
        "BUILTIN_RULES",
        "MaskSettings",
        "Masker",
        "PatternRule",
        "StreamMasker",
        "replacement",
    ]


@pytest.mark.parametrize(
    "encode",
    [
        lambda v: v,
        lambda v: base64.b64encode(v),
        lambda v: base64.b64encode(v).rstrip(b"="),
        lambda v: base64.urlsafe_b64encode(v),
        lambda v: quote_plus(v, safe="").encode(),
        lambda v: v.hex().encode(),
        lambda v: v.hex().upper().encode(),
    ],
    ids=["raw", "base64", "base64-nopad", "base64url", "percent", "hex", "HEX"],
)
def test_each_encoding_is_masked_with_the_literal_rule_id(engine: str, encode: object) -> None:
    assert callable(encode)
    form = encode((SECRET + "/?&").encode())
    masker = make(engine, literals=(("env:API_KEY", SECRET + "/?&"),))
    assert masker.mask_bytes(b"a " + form + b" b") == b"a [MASKED:env:API_KEY] b"


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"xyz"])
def test_secret_inside_a_longer_base64_blob_is_masked(engine: str, prefix: bytes) -> None:
    value = SECRET.encode()
    blob = base64.b64encode(prefix + value + b"-and some trailing bytes")
    masker = make(engine, literals=(("cred", SECRET),))
    out = masker.mask_bytes(b"Authorization: Basic " + blob)
    assert b"[MASKED:cred]" in out
    # The base64 characters whose 6 bits all come from the secret must be gone.
    first = -(-8 * len(prefix) // 6)
    end = 8 * (len(prefix) + len(value)) // 6
    assert blob[first:end] not in out
    assert out.startswith(b"Authorization: Basic " + blob[:first])


def test_basic_auth_header_is_masked() -> None:
    header = b"Authorization: Basic " + base64.b64encode(b"deploy:" + SECRET.encode())
    out = make(literals=(("pw", SECRET),)).mask_bytes(header)
    assert out.startswith(b"Authorization: Basic ")
    assert b"[MASKED:pw]" in out


def test_secret_with_newlines_split_over_chunks(engine: str) -> None:
    value = "line one\nline two\n" + rand(10)
    masker = make(engine, literals=(("multi", value),))
    data = ("prefix " + value + " suffix").encode()
    stream = masker.stream()
    out = b"".join(stream.feed(data[i : i + 3]) for i in range(0, len(data), 3)) + stream.flush()
    assert out == b"prefix [MASKED:multi] suffix"


def test_overlapping_occurrences_are_all_masked() -> None:
    masker = make(literals=(("r", "abab"),))
    assert masker.mask_bytes(b"xabababx") == b"x[MASKED:r]x"


def test_add_secret_masks_output_still_held_and_everything_after(engine: str) -> None:
    masker = make(engine)
    stream = masker.stream()
    held = stream.feed(b"issued " + SECRET.encode() + b" ")
    masker.add_secret(SECRET, "credential:db")
    rest = stream.feed(b"again " + SECRET.encode()) + stream.flush()
    assert held + rest == b"issued [MASKED:credential:db] again [MASKED:credential:db]"
    assert masker.literal_count == 1
    assert masker.mask_text(f"x{SECRET}x") == "x[MASKED:credential:db]x"


def test_add_secret_accepts_bytes_and_is_thread_safe(engine: str) -> None:
    masker = make(engine)
    values = [rand(16, seed=100 + i).encode() for i in range(8)]
    errors: list[BaseException] = []

    def register(value: bytes) -> None:
        try:
            masker.add_secret(value, "t")
            for _ in range(20):
                assert masker.mask_bytes(b"<" + value + b">") == b"<[MASKED:t]>"
        except BaseException as exc:  # surfaced below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert masker.literal_count == len(values)
    assert masker.mask_bytes(b" ".join(values)) == b" ".join([b"[MASKED:t]"] * len(values))


def test_flush_idle_holds_a_literal_prefix_and_shows_the_rest(engine: str) -> None:
    masker = make(engine, literals=(("env:TOKEN", SECRET),))
    stream = masker.stream()
    assert stream.feed(b"password: " + SECRET[:5].encode()) == b""
    assert stream.flush_idle() == b"password: "
    assert stream.feed(SECRET[5:].encode() + b"\n$ ") == b""
    assert stream.flush_idle() == b"[MASKED:env:TOKEN]\n$ "
    assert stream.flush() == b""


def test_flush_idle_shows_a_prompt_at_once(engine: str) -> None:
    stream = make(engine, literals=(("k", SECRET),)).stream()
    stream.feed(b"Continue? [y/N] ")
    assert stream.flush_idle() == b"Continue? [y/N] "


def test_hmac_correlation_is_stable_per_key_and_hides_the_value() -> None:
    value = SECRET.encode()
    key_a, key_b = b"k" * 32, b"j" * 32
    with_a = make(literals=(("s", SECRET),), correlate="hmac", hmac_key=key_a)
    with_b = make(literals=(("s", SECRET),), correlate="hmac", hmac_key=key_b)
    out_a = with_a.mask_bytes(value + b" " + value)
    first, second = out_a.split(b" ")
    assert first == second == replacement("s", value, key_a)
    assert first.startswith(b"[MASKED:s:") and len(first) == len(b"[MASKED:s:]") + 12
    assert with_b.mask_bytes(value) != first
    assert replacement("s", b"other-value", key_a) != first
    assert value not in out_a


def test_replacement_without_key() -> None:
    assert replacement("github-token", b"anything", None) == b"[MASKED:github-token]"


def test_policy_pattern_with_secret_group() -> None:
    rule = PatternRule(id="acme-token", regex=r"acme_(?P<secret>[A-Za-z0-9]{32})")
    token = rand(32)
    out = make(patterns=(rule,)).mask_text(f"t=acme_{token};")
    assert out == "t=acme_[MASKED:acme-token];"


def test_a_match_longer_than_max_len_is_masked_in_pieces(engine: str) -> None:
    rule = PatternRule(id="kv", regex=r"secret=\S+", max_len=16)
    value = rand(100)
    masker = make(engine, patterns=(rule,), builtin=False)
    data = f"a secret={value} b".encode()
    one_shot = masker.mask_bytes(data)
    stream = masker.stream()
    streamed = b"".join(stream.feed(data[i : i + 7]) for i in range(0, len(data), 7))
    assert streamed + stream.flush() == one_shot
    assert value[:8].encode() not in one_shot
    assert one_shot.startswith(b"a [MASKED:kv]") and one_shot.endswith(b" b")


def test_overlapping_rules_merge_and_take_the_leftmost_rule_id() -> None:
    token = "gh" + "p_" + rand(36)
    masker = make(literals=(("env:GH", "x-access-token:" + token),))
    out = masker.mask_text(f"https://x-access-token:{token}@github.com/o/r")
    assert out == "https://[MASKED:env:GH]@github.com/o/r"


def test_settings_repr_and_errors_never_show_secret_values() -> None:
    settings = MaskSettings(literals=(("env:A", SECRET),), correlate="hmac", hmac_key=b"k" * 16)
    assert SECRET not in repr(settings)
    assert "kkkk" not in repr(settings)
    with pytest.raises(ConfigError) as err:
        make(literals=(("env:SHORT", "abc"),))
    assert "abc" not in err.value.explain()


def test_short_literal_is_refused() -> None:
    with pytest.raises(ConfigError, match="env:PIN"):
        make(literals=(("env:PIN", "123"),))
    masker = make()
    with pytest.raises(ConfigError, match="shorter than 4"):
        masker.add_secret(b"xyz")
    assert make(literals=(("env:PIN", "123"),), min_literal_len=3).literal_count == 1


def test_invalid_regex_names_the_rule_and_what_re2_rejected() -> None:
    rule = PatternRule(id="bad-lookahead", regex=r"token(?=abc)")
    with pytest.raises(ConfigError) as err:
        make(patterns=(rule,))
    assert "bad-lookahead" in err.value.message
    assert "RE2" in err.value.message and "(?=" in err.value.message


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (PatternRule(id="empty", regex=r"x*"), "empty string"),
        (PatternRule(id="github-token", regex=r"ghp_x+"), "defined twice"),
        (PatternRule(id="bad id!", regex=r"x+"), "not valid"),
        (PatternRule(id="huge", regex=r"x+", max_len=0), "max_len"),
        (PatternRule(id="backref", regex=r"(a)\1"), "RE2 rejected"),
    ],
)
def test_bad_pattern_rules_are_refused(rule: PatternRule, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        make(patterns=(rule,))


def test_hmac_without_key_is_refused() -> None:
    with pytest.raises(ConfigError, match="needs a key"):
        make(correlate="hmac")


def test_engine_names() -> None:
    assert make("re2").engine_name == "re2"
    assert make("hyperscan").engine_name == "hyperscan"
    assert Masker(MaskSettings()).engine_name == "hyperscan"


def test_hyperscan_missing_is_a_config_error_and_auto_falls_back() -> None:
    script = (
        "import sys; sys.modules['hyperscan'] = None\n"
        "from airlock.errors import ConfigError\n"
        "from airlock.mask import Masker, MaskSettings\n"
        "print(Masker(MaskSettings()).engine_name)\n"
        "try:\n"
        "    Masker(MaskSettings(engine='hyperscan'))\n"
        "except ConfigError as exc:\n"
        "    print('ConfigError', exc.message)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "re2"
    assert lines[1].startswith("ConfigError") and "hyperscan" in lines[1]


def test_mask_text_round_trips_unicode() -> None:
    masker = make(literals=(("k", "pässwörd-" + rand(6)),))
    assert masker.mask_text("héllo pässwörd-" + rand(6) + " ✓") == "héllo [MASKED:k] ✓"


def test_empty_inputs() -> None:
    masker = make()
    stream = masker.stream()
    assert stream.feed(b"") == b""
    assert stream.flush_idle() == b""
    assert stream.flush() == b""
    assert masker.mask_bytes(b"") == b""


def test_large_literal_set_gives_the_same_bytes_on_both_engines() -> None:
    # 200 literals make ~1,460 forms: hyperscan then scans patterns and literals in one pass.
    values = [rand(20 + i % 17, seed=500 + i) for i in range(200)]
    literals = tuple((f"env:S{i}", v) for i, v in enumerate(values))
    token = "gh" + "p_" + rand(36)
    data = b"".join(
        f"line {i} {values[i * 7 % 200]} {token if i % 5 == 0 else 'ok'}\n".encode()
        for i in range(300)
    ) + base64.b64encode(values[3].encode())
    hs_masker = make("hyperscan", literals=literals)
    re_masker = make("re2", literals=literals)
    expected = re_masker.mask_bytes(data)
    stream = hs_masker.stream()
    streamed = b"".join(stream.feed(data[i : i + 999]) for i in range(0, len(data), 999))
    assert streamed + stream.flush() == expected == hs_masker.mask_bytes(data)
    assert expected.count(b"[MASKED:env:S") == 301
    assert expected.count(b"[MASKED:github-token]") == 60
    assert not any(v.encode() in expected for v in values)


def test_rules_compiled_by_warm_up_are_shared_by_later_maskers() -> None:
    """Start-up compiles the rules on a thread; the session's masker takes them, same results."""
    rule = PatternRule("warm-up-rule", r"wu-[0-9]{6}-tok")
    settings = MaskSettings(patterns=(rule,))
    Masker.warm_up(settings)
    maskers = [Masker(settings) for _ in range(2)]  # the first may wait for the warm-up thread
    assert maskers[0]._prefilter is maskers[1]._prefilter
    for masker in maskers:
        assert masker.mask_text("a wu-123456-tok b") == "a [MASKED:warm-up-rule] b"


def test_warm_up_leaves_errors_to_the_masker() -> None:
    bad = MaskSettings(patterns=(PatternRule("dup", "x{4}"), PatternRule("dup", "y{4}")))
    Masker.warm_up(bad)
    with pytest.raises(ConfigError, match="defined twice"):
        Masker(bad)


def test_mask_text_remembers_answers_but_not_past_a_new_secret() -> None:
    masker = Masker(MaskSettings())
    word = "deploy --token=late-secret-9f8e7d6c"
    assert masker.mask_text(word) == word
    assert masker.mask_text(word) == word  # answered from memory
    masker.add_secret("late-secret-9f8e7d6c", "credential:late")
    assert masker.mask_text(word) == "deploy --token=[MASKED:credential:late]"


def test_a_buffer_with_nothing_to_mask_comes_back_as_is(engine: str) -> None:
    masker = make(engine)
    clean = b"SELECT abalance FROM pgbench_accounts WHERE aid = 12345;"
    assert masker.mask_bytes(clean) is clean  # no literal secrets yet
    masker.add_secret(SECRET, "credential:db")
    assert masker.mask_bytes(clean) is clean
    text = "ls -la /tmp é"
    assert masker.mask_text(text) is text
    # One scan decides it, so a hit by either a literal or a pattern rule is still masked.
    assert masker.mask_bytes(clean + SECRET.encode()) == clean + b"[MASKED:credential:db]"
    key = b"AKIA" + b"ABCDEFGHIJKLMNOP"
    assert b"AKIA" not in masker.mask_bytes(b"key=" + key + b" end")
    assert masker.mask_bytes(bytearray(clean)) == clean
