"""The admin key's checks: a weak key or an unsafe key file never turns access control off silently."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ruthctl.access import (
    DEFAULT_KEYED,
    WeakToken,
    admin_token,
    check_token,
    keyed_apis,
    read_token_file,
    secure_state_dir,
)

STRONG = "Zx9-Qw8_Ev7.Rt6~Yu5Io4Pa3Sd2Fg1Hj0Kl"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("", "empty"),
        ("   ", "characters outside"),
        ("a" * 40, "distinct"),
        ("short-but-varied-123", "at least 32"),
        (STRONG + "\n" + STRONG, "more than one line"),
        (STRONG + " x", "characters outside"),
        (STRONG + ":x", "characters outside"),
        (STRONG + '"', "characters outside"),
        ("k" * 300, "at most 256"),
    ],
)
def test_weak_keys_are_refused_with_the_reason(token: str, reason: str) -> None:
    with pytest.raises(WeakToken, match=reason):
        check_token(token, "RUTH_ADMIN_TOKEN")


def test_a_strong_key_passes() -> None:
    assert check_token(STRONG, "x") == STRONG


def test_the_generated_key_file_is_0600_in_a_0700_dir_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = admin_token(state)
    assert admin_token(state) == first and len(first) >= 32
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "admin-token").st_mode) == 0o600


@pytest.mark.parametrize("content", ["", "  \n", "tooshort\n", STRONG + "\nsecond line\n"])
def test_an_empty_short_or_multiline_key_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "admin-token"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(WeakToken):
        admin_token(tmp_path)


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "elsewhere"
    real.write_text(STRONG + "\n")
    real.chmod(0o600)
    (tmp_path / "admin-token").symlink_to(real)
    with pytest.raises(WeakToken, match="symlink"):
        admin_token(tmp_path)


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    path.write_text(STRONG + "\n")
    path.chmod(0o644)
    with pytest.raises(WeakToken, match="chmod 600"):
        read_token_file(path)


def test_the_environment_key_is_checked_too(tmp_path: Path) -> None:
    with pytest.raises(WeakToken, match="RUTH_ADMIN_TOKEN"):
        admin_token(tmp_path, "  ")
    base64_key = "q3Jx+8Hk/2mZ0vN9aB7cD1eF4gH5iJ6kL8mN0oP2qR4="  # `openssl rand -base64 32`
    assert admin_token(tmp_path, base64_key) == base64_key
    assert not (tmp_path / "admin-token").exists()


def test_an_empty_environment_key_means_the_generated_one_never_no_key(tmp_path: Path) -> None:
    generated = admin_token(tmp_path, "")
    assert check_token(generated, "generated") == generated
    assert (tmp_path / "admin-token").exists()


def test_a_loose_state_dir_is_tightened_and_symlinks_are_left_alone(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "breakers").mkdir(parents=True)
    state.chmod(0o755)
    (state / "breakers").chmod(0o755)
    (state / "breakers" / "m.json").write_text("{}")
    (state / "breakers" / "m.json").chmod(0o644)
    target = tmp_path / "outside"
    target.write_text("")
    target.chmod(0o644)
    (state / "link").symlink_to(target)
    secure_state_dir(state)
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "breakers").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "breakers" / "m.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o644


def test_keyed_apis_can_grow_but_never_shrink() -> None:
    assert keyed_apis([]) == DEFAULT_KEYED
    assert keyed_apis(["statistics", " model-config", ""]) == (*DEFAULT_KEYED, "statistics", "model-config")
    with pytest.raises(ValueError, match="inference"):
        keyed_apis(["inference"])
