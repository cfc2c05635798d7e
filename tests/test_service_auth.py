"""API keys and per-key limits without a server: key making, the key file's grammar, sign-in, the token bucket
(the HTTP side is tests/test_service_security.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from instantid.errors import InvalidInputError
from instantid.service import auth
from instantid.service.auth import KeyRing, RateLimiter, hash_key, load_api_keys, new_api_key


def test_new_keys_are_random_and_their_line_holds_only_the_hash() -> None:
    key, line = new_api_key("ci.bot@host-1")
    other, _ = new_api_key("x" * 64)
    assert key.startswith("iid_") and len(key) == 4 + 43 and key != other
    assert line == f"ci.bot@host-1 sha256:{hashlib.sha256(key.encode()).hexdigest()}" and key not in line
    for bad in ("", "x" * 65, "has space", "semi;colon"):
        with pytest.raises(InvalidInputError, match="API key name"):
            new_api_key(bad)


def test_key_file_lines_comments_and_limits(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"# name digest limits\n\nalice {hash_key('a')} rate=30 jobs=2  # a comment # with two #\n"
                    f"bob {hash_key('b')}\ncarol {hash_key('c')} jobs=1.9 rate=0.5\n", encoding="utf-8")
    alice, bob, carol = load_api_keys(path)
    assert (alice.name, alice.digest, alice.rate_per_minute, alice.max_jobs) == (
        "alice", hashlib.sha256(b"a").digest(), 30.0, 2)
    assert (bob.rate_per_minute, bob.max_jobs) == (None, None)
    assert (carol.rate_per_minute, carol.max_jobs) == (0.5, 1) and isinstance(carol.max_jobs, int)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alice\n", "keys.txt line 1: expected 'NAME sha256:<64 hex digits> [rate=N] [jobs=N]'"),
        (f"# c\nbad/name {hash_key('a')}\n", "keys.txt line 2: expected"),
        ("alice sha256:" + "A" * 64 + "\n", "line 1: expected"),
        ("alice sha256:" + "0" * 63 + "\n", "line 1: expected"),
        (f"alice {hash_key('a')} rate=0\n", "line 1: 'rate=0' is not rate=N or jobs=N with N > 0"),
        (f"alice {hash_key('a')} jobs=-1\n", "'jobs=-1' is not rate=N"),
        (f"alice {hash_key('a')} rate=fast\n", "'rate=fast' is not rate=N"),
        (f"alice {hash_key('a')} speed=3\n", "'speed=3' is not rate=N"),
        ("# only a comment\n\n", "holds no keys"),
    ],
)
def test_a_bad_key_file_is_one_line_naming_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidInputError) as caught:
        load_api_keys(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_an_unreadable_key_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="cannot read the API key file"):
        load_api_keys(tmp_path / "missing.txt")
    (tmp_path / "latin.txt").write_bytes(b"alice \xff\n")
    with pytest.raises(InvalidInputError, match="cannot read the API key file"):
        load_api_keys(tmp_path / "latin.txt")


def test_keyring_finds_names_and_signs_in_only_with_both_right(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"alice {hash_key('ka')}\nbob {hash_key('kb')} rate=5\n", encoding="utf-8")
    ring = KeyRing(load_api_keys(path))
    assert ring.named("bob").rate_per_minute == 5.0 and ring.named("alice").name == "alice"
    assert ring.named("carol") is None
    assert ring.identify("kb").name == "bob" and ring.identify("kc") is None
    assert ring.sign_in("alice", "ka") and ring.sign_in("bob", "kb")
    assert not ring.sign_in("bob", "ka") and not ring.sign_in("alice", "nope") and not ring.sign_in("", "ka")


def test_token_bucket_bursts_then_refills_at_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    limiter = RateLimiter()
    assert limiter.take("a", 2) is None and limiter.take("a", 2) is None  # a burst of `rate`
    assert limiter.take("a", 2) == pytest.approx(30.0)  # the next token in 60 / rate seconds
    assert limiter.take("b", 2) is None  # buckets are per client
    clock[0] += 15
    assert limiter.take("a", 2) == pytest.approx(15.0)  # half a token came back
    clock[0] += 15
    assert limiter.take("a", 2) is None
    clock[0] += 3600  # a long pause refills to `rate`, not beyond
    assert [limiter.take("a", 2) for _ in range(3)] == [None, None, pytest.approx(30.0)]
