"""Credentials come from the environment only and never reach logs, manifests or error messages.

Masking rules (``redact``):

- the values of the credential variables in ``SECRET_ENV`` are replaced by ``<NAME>`` wherever they
  appear, in any case, and so are the form the run-folder slug maps them to (``hf_ab/cd`` -> ``hf-ab-cd``) and their
  escaped forms (repr, JSON, %-encoding);
- values of 8 characters or more are masked, except plain names under 16 characters: parts joined by
  ``_ - . / :`` that are each a word (letters only), a short number (under 8 digits) or a short mix
  of letters and digits (under 7 characters, at most two letter/digit changes: ``o1``, ``gpt4o``):
  ``pubmedqa``, ``medical_o1``, ``llama3-8b``, ``2026-11-30``. Shorter values, plain names and placeholders such as ``true`` or ``none`` are not
  credentials anyone can use (real tokens are 30-40 characters of letters and digits; a password
  such as ``s3cret12`` is one long mix, and stays masked), and masking them rewrote ordinary words
  and paths: ``HF_TOKEN=review`` turned a run's config.yaml into ``model.name: /tmp/<HF_TOKEN>/tiny``,
  and ``HF_TOKEN=medical_o1`` into ``format: <HF_TOKEN>``, which no longer loads;
- anything shaped like a Hugging Face or GitHub token (``hf_`` + 20 or more letters/digits, ``ghp_``...) is masked
  as ``<token>`` even when it is not in the environment, and so is the password of a URL
  (``https://user:<password>@host``, as in an MLFLOW_TRACKING_URI) and a URL's user name given alone, GitHub's
  form for a token (``https://<credentials>@host``).

Untrusted text (values read from a run's config.yaml, file and folder names) is printed through
``printable``: control characters, newlines and Unicode bidi/format characters are escaped, and it
is truncated, so a crafted name cannot forge log lines, move the terminal cursor or reorder what a
reader sees.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import unicodedata

SECRET_ENV = (
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "HF_HUB_TOKEN",  # huggingface_hub (+ legacy names)
    "WANDB_API_KEY",  # wandb
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",  # mlflow's basic-auth password and bearer token
)
MIN_SECRET_LEN = 8
MIN_WORD_SECRET_LEN = 16  # a plain name below this (pubmedqa, medical_o1) is not a credential
_PLACEHOLDERS = {"true", "false", "none", "null", "unset", "empty"}
_HF_TOKEN_SHAPE = re.compile(r"\b(hf_[A-Za-z0-9]{20,})\b")
# Hugging Face tokens, GitHub's (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_) and GitLab's (glpat-...), which data URLs carry, and the API keys of
# the usual services a user may paste into a URL: OpenAI's and Anthropic's sk-..., AWS access key ids, Google API keys,
# Slack tokens, JSON web tokens (each with a digit, so that no long word or file name takes the shape)
_TOKEN_SHAPES = re.compile(
    r"\b(hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,}"
    r"|sk-(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{20,}|(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
    r"|gl(?:pat|dt|rt|ptt|soat|ft|cbt)-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,})(?![A-Za-z0-9_-])")
# A URL's query parameter that carries a credential (an access token, an API key, a presigned URL's signature): any
# parameter whose name holds one of these words (private_token, x-api-key, subscription-key, X-Amz-Signature, Azure's
# code=...); masking a harmless parameter too only shortens what is shown
_URL_CREDENTIAL_PARAM = re.compile(
    r"(?i)([?&;][\w.~-]*(?:token|key|secret|passw|pwd|auth|sig|credential|session|code|sas|jwt)[\w.~-]*=)([^&#\s'\"]+)")
_NAME_PARTS = re.compile(r"[_\-./:]+")
_SLUG = re.compile(r"[^A-Za-z0-9.]+")
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s@:]+):([^/\s@]+)@")
_URL_USER = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s@:]+)@")  # a token given as the URL's user name


def slug(text: str) -> str:
    """The folder-name form of ``text``: runs of anything but letters, digits and dots become '-'."""
    return _SLUG.sub("-", text).strip("-")


def _plain_part(part: str) -> bool:
    if not part.isascii():
        return False
    switches = sum(a.isdigit() != b.isdigit() for a, b in zip(part, part[1:]))
    return part.isalpha() or (part.isdigit() and len(part) < 8) or (part.isalnum() and len(part) < 7 and switches <= 2)


def plain_name(value: str) -> bool:
    """A value under 16 characters made of words, short numbers and short letter-digit mixes joined by
    _ - . / : (pubmedqa, medical_o1, llama3-8b): a name that config files hold, not a credential."""
    parts = [part for part in _NAME_PARTS.split(value) if part]
    return len(value) < MIN_WORD_SECRET_LEN and bool(parts) and all(_plain_part(part) for part in parts)


def maskable(value: str) -> bool:
    """Whether a credential value is masked: 8 characters or more, not a placeholder (true, none...), and not
    a plain name (pubmedqa, medical_o1), which would mask the same name in the run's own config."""
    if len(value) < MIN_SECRET_LEN or value.lower() in _PLACEHOLDERS:
        return False
    return not plain_name(value)


def secret_values() -> list[tuple[str, str]]:
    """(variable name, value) of every credential set in the environment that is long enough to mask."""
    found = []
    for name in SECRET_ENV:
        value = os.environ.get(name, "").strip()
        if maskable(value):
            found.append((name, value))
    # longest first, so that a secret containing another one is masked whole
    return sorted(found, key=lambda item: -len(item[1]))


def _forms(value: str) -> set[str]:
    """The forms a credential's value can take in what the kit prints or writes: as it is, its run-folder slug, and
    escaped as Python's repr, JSON and a URL write it (a backslash doubled, %-encoded); each is masked in any case
    (a value lower-cased on its way into a message is still the credential)."""
    from urllib.parse import quote

    forms = {value, value.encode("unicode_escape").decode("ascii"), json.dumps(value)[1:-1], quote(value, safe="")}
    mapped = slug(value)
    if maskable(mapped):
        forms.add(mapped)
    return {form for form in forms if form}


@functools.lru_cache(maxsize=8)
def _masks(secrets: tuple[tuple[str, str], ...]) -> tuple[tuple[re.Pattern, str], ...]:
    """One case-insensitive pattern of every form of each credential, the longest credentials first."""
    return tuple((re.compile("|".join(re.escape(form) for form in sorted(_forms(value), key=len, reverse=True)),
                             re.IGNORECASE), f"<{name}>") for name, value in secrets)


def redact(text: str) -> str:
    """``text`` with every credential from the environment (in any of its forms: ``_forms``, in any case), and
    anything shaped like an HF token, masked."""
    for pattern, mask in _masks(tuple(secret_values())):
        text = pattern.sub(mask, text)
    text = _URL_PASSWORD.sub(r"\1:<password>@", _TOKEN_SHAPES.sub("<token>", text))
    text = _URL_CREDENTIAL_PARAM.sub(r"\1<credentials>", text) if "=" in text else text
    return _URL_USER.sub(r"\1<credentials>@", text)


def contains_secret(text: str) -> str | None:
    """The name of the credential variable whose value (or slug form) ``text`` contains, else None."""
    for pattern, mask in _masks(tuple(secret_values())):
        if pattern.search(text):
            return mask[1:-1]
    if _HF_TOKEN_SHAPE.search(text):
        return "a Hugging Face token"
    if _TOKEN_SHAPES.search(text):
        return "an access token"
    return None


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    # Cc: control characters (ESC, BEL, DEL, C1...); Cf: format characters (bidi overrides and
    # isolates, zero-width joiners, BOM...); Zl/Zp: line and paragraph separators; Cs: lone surrogates
    if unicodedata.category(char) in {"Cc", "Cf", "Zl", "Zp", "Cs"}:
        code = ord(char)
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return char


def printable(text: object, limit: int = 200) -> str:
    """``text`` safe to print on one line: credentials masked, control characters, newlines and
    Unicode bidi/format characters escaped (``\\n``, ``\\x1b``, ``\\u202e``), at most ``limit``
    characters of the original (then ``...``)."""
    text = redact(str(text))
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    out = "".join(_escape(c) for c in text)
    return out + ("..." if cut else "")


class RedactingFilter(logging.Filter):
    """Masks credentials in a log record's message and in its traceback (log.exception's text quotes the
    failing line and the exception's message, either of which may hold a token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def unpaired_surrogate(text: str) -> bool:
    """Text holding half of a UTF-16 pair (JSON's "\\ud800" escape alone): no file or tokenizer takes it."""
    return not text.isascii() and any("\ud800" <= ch <= "\udfff" for ch in text)
