"""handlers/auth.py: tokens from a file, re-read when it changes, a Bearer value accepted only with
one of them, nothing accepted from an empty or missing file."""
from __future__ import annotations

import os

from handlers.auth import TokenFile, bearer


def test_each_token_of_the_file_is_accepted_and_nothing_else(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("# rotated monthly\nalpha-1\n\n  beta-2  \n")
    tokens = TokenFile(f)
    assert tokens.tokens() == (b"alpha-1", b"beta-2")
    assert tokens.accepts("Bearer alpha-1") and tokens.accepts(b"bearer beta-2") and tokens.accepts(bearer("beta-2")["Authorization"])
    for value in (None, "", "alpha-1", "Bearer", "Bearer ", "Basic alpha-1", "Bearer alpha-", "Bearer alpha-12",
                  "Bearer # rotated monthly", "Token alpha-1"):
        assert not tokens.accepts(value), value


def test_a_changed_file_takes_effect_without_a_new_object(tmp_path):
    f = tmp_path / "tokens"
    f.write_text("old\n")
    tokens = TokenFile(f)
    assert tokens.accepts("Bearer old")
    # the kubelet updates a Secret volume by swapping a symlink to a new file
    new = tmp_path / "tokens.new"
    new.write_text("new\n")
    os.replace(new, f)
    assert tokens.accepts("Bearer new") and not tokens.accepts("Bearer old")


def test_an_empty_or_missing_file_accepts_nothing(tmp_path):
    missing = TokenFile(tmp_path / "absent")
    assert not missing.accepts("Bearer ") and not missing.accepts("Bearer x")
    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    assert TokenFile(empty).tokens() == () and not TokenFile(empty).accepts("Bearer # nothing yet")


def test_bearer_header():
    assert bearer("t") == {"Authorization": "Bearer t"} and bearer(None) == {} and bearer("") == {}
