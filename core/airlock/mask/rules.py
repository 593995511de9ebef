"""Pattern rules: the built-in secret shapes and the type policies use to add their own.

Every rule has a stable id; the id appears in replacements (``[MASKED:<id>]``), in events and in
docs/masking.md. A rule may name a group ``secret``: then only that group is masked and the rest
of the match (a key name, a URL's scheme, user and host) stays readable.

Each built-in regex is RE2 syntax over bytes. Test tokens are never written out here: the shapes
are described by character classes, so nothing in the repository looks like a live credential.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BUILTIN_RULES", "PatternRule"]


@dataclass(frozen=True)
class PatternRule:
    """A regex rule.

    ``regex`` is RE2 syntax (no backreferences, no lookaround), matched against bytes with each
    byte a character (Latin-1). ``max_len`` bounds how long one match may be: it is how far the
    streaming masker looks back across chunks, and a longer run is masked in ``max_len`` pieces.
    """

    id: str
    regex: str
    max_len: int = 512
    description: str = ""
    hold: str = ""
    """RE2 regex, anchored at the end (``\\z``), for the start of a match that more bytes could
    complete, when that start has whitespace in it (a trailing run of non-whitespace bytes is
    always held). A quiet stream holds such a tail back for the hold window."""


_END_OF_KEY = r"(?:[^A-Za-z0-9_\-]|\z)"  # a token's end: not followed by more token characters

BUILTIN_RULES: tuple[PatternRule, ...] = (
    PatternRule(
        id="aws-access-key-id",
        regex=r"\b(?:A3T[A-Z0-9]|AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b",
        max_len=64,
        description="AWS access key id: AKIA/ASIA/ABIA/ACCA + 16 upper-case letters or digits",
    ),
    PatternRule(
        id="aws-secret-access-key",
        regex=(
            r"(?i:aws_?secret_?access_?key|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
            r"(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|\z)"
        ),
        max_len=256,
        description="AWS secret access key: 40 characters after aws_secret_access_key= or "
        "AWS_SECRET_ACCESS_KEY: (or SecretAccessKey in JSON); only the value is masked",
        hold=(
            r"(?i:aws_?secret_?access_?key|secret_?access_?key)[\"']?\s*"
            r"(?:[:=]\s*[\"']?[A-Za-z0-9/+]{0,40})?\z"
        ),
    ),
    PatternRule(
        id="github-token",
        regex=r"\bgh[pousr]_[A-Za-z0-9]{36,}",
        description="GitHub token: ghp_ (classic PAT), gho_, ghu_, ghs_, ghr_ + 36 or more "
        "letters and digits",
    ),
    PatternRule(
        id="github-fine-grained-pat",
        regex=r"\bgithub_pat_[A-Za-z0-9_]{22,}",
        description="GitHub fine-grained personal access token: github_pat_ + 22 or more "
        "characters",
    ),
    PatternRule(
        id="gitlab-token",
        regex=(
            r"\b(?:(?:glpat|gldt|glrt|glrtr|glptt|glsoat|gloas|glcbt|glimt|glft|glagent"
            r"|glffct|glwt|gltst)-|GR1348941)[A-Za-z0-9_\-]{20,}(?:\.[A-Za-z0-9_\-]+){0,3}"
        ),
        description="GitLab token: glpat- (personal/project/group), gldt- (deploy), glrt- "
        "(runner), glptt- (pipeline trigger), glsoat- (SCIM), gloas- (OAuth app), glcbt- (CI "
        "build), glimt-, glft-, glagent-, glffct-, GR1348941 (runner registration) + 20 or more",
    ),
    PatternRule(
        id="slack-token",
        regex=r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
        description="Slack token: xoxb- (bot), xoxp- (user), xoxa-, xoxo-, xoxr-, xoxs-",
    ),
    PatternRule(
        id="slack-webhook",
        regex=r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,}",
        description="Slack incoming webhook URL (the whole URL is the credential)",
    ),
    PatternRule(
        id="stripe-key",
        regex=r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}",
        description="Stripe secret or restricted key: sk_live_, rk_live_, sk_test_, rk_test_",
    ),
    PatternRule(
        id="google-api-key",
        regex=r"(?P<secret>\bAIza[0-9A-Za-z_\-]{35})" + _END_OF_KEY,
        max_len=64,
        description="Google API key: AIza + 35 characters",
    ),
    PatternRule(
        id="private-key-block",
        regex=(
            r"-----BEGIN[ A-Z0-9]{0,40} PRIVATE KEY(?: BLOCK)?-----"
            r"(?:[\s\S]*?-----END[ A-Z0-9]{0,40} PRIVATE KEY(?: BLOCK)?-----"
            r"|(?:[A-Za-z0-9+/=\s:,.\-]*[A-Za-z0-9+/=])?)"
        ),
        max_len=8192,
        description="PEM/OpenSSH/PGP private key block, BEGIN through END (multi-line); a block "
        "cut short (no END line) is masked from BEGIN through its last base64 line",
        # BEGIN, then header and base64 lines (never two dashes in a row), then a partial END.
        hold=(
            r"-----BEGIN[ A-Z0-9]{0,60}(?:-{1,5}(?:[A-Za-z0-9+/=\s:,.]|-[A-Za-z0-9+/=\s:,.])*"
            r"(?:-{1,5}(?:E|EN|END[ A-Z0-9]{0,60}-{0,4})?)?)?\z"
        ),
    ),
    PatternRule(
        id="jwt",
        regex=r"\beyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}",
        max_len=8192,
        description="JSON Web Token (signed): eyJ<header>.eyJ<payload>.<signature>",
    ),
    PatternRule(
        id="uri-password",
        regex=(
            r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/?#@\[\]\"'<>]+:"
            r"(?P<secret>[^\s/?#@\[\]\"'<>]+)@"
        ),
        description="Password in a URL (scheme://user:PASSWORD@host): only the password is "
        "masked, scheme, user and host stay readable",
    ),
)
