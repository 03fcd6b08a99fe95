"""Failed TAXII logins: an unknown username and a wrong password are one and the same to a
client, and each failure waits longer than the one before, per username and per address."""

from __future__ import annotations

from pathlib import Path

import requests
from argon2 import extract_parameters
from taxii_helpers import PASSWORDS, start_taxii

from taxii_server.accounts import FAILURE_WINDOW, FailureThrottle

TAXII = {"Accept": "application/taxii+json;version=2.1"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_waits_double_per_username_and_per_address_up_to_the_cap() -> None:
    clock = Clock()
    throttle = FailureThrottle(0.25, 2.0, clock)
    # one username guessed from ever new addresses
    waits = [throttle.failed("twcert", f"192.0.2.{n}") for n in range(6)]
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    # ever new usernames from one address
    waits = [throttle.failed(f"user{n}", "198.51.100.1") for n in range(4)]
    assert waits == [0.25, 0.5, 1.0, 2.0]
    assert throttle.delay("someone-else", "203.0.113.1") == 0.25
    clock.now += FAILURE_WINDOW + 1  # failures long past are forgotten
    assert throttle.delay("twcert", "198.51.100.1") == 0.25


def test_a_correct_login_clears_its_address_not_the_username() -> None:
    throttle = FailureThrottle(0.25, 8.0, Clock())
    for _ in range(3):
        throttle.failed("twcert", "192.0.2.1")
    throttle.succeeded("192.0.2.1")
    assert throttle.delay("other", "192.0.2.1") == 0.25
    assert throttle.delay("twcert", "192.0.2.99") == 2.0  # a guesser elsewhere still waits


def test_unknown_user_and_wrong_password_answer_alike_and_count_alike(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    waited: list[float] = []
    with start_taxii(
        tmp_path, environ, auth_failure_delay="0.001", auth_failure_delay_max="0.004"
    ) as taxii:
        accounts = taxii.state.accounts
        accounts._sleep = waited.append  # the waits are counted here, not slept
        url = taxii.api_root + "collections/"

        def attempt(user: str, password: str) -> requests.Response:
            return requests.get(url, auth=(user, password), headers=TAXII, timeout=30)

        wrong = attempt("twcert", "not-the-password")
        unknown = attempt("no-such-user", "not-the-password")
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.content == unknown.content
        assert wrong.headers["WWW-Authenticate"] == unknown.headers["WWW-Authenticate"]
        assert waited == [0.001, 0.002]  # the second failure from this address waits longer
        assert accounts.throttle.delay("no-such-user", "192.0.2.1") == 0.002
        assert accounts.throttle.delay("twcert", "192.0.2.1") == 0.002

        # the decoy an unknown username is checked against costs what a real account costs
        config = taxii.state.partners.current()
        decoy = accounts._decoy(config)
        twcert = config.partners["twcert"].taxii
        assert twcert is not None and decoy != twcert.password_hash
        assert extract_parameters(decoy) == extract_parameters(twcert.password_hash)

        good = attempt("twcert", PASSWORDS["twcert"])
        assert good.status_code == 200 and len(waited) == 2  # success never waits
        assert accounts.throttle.delay("jpcert", "127.0.0.1") == 0.001  # address cleared


def test_behind_the_proxy_the_forwarded_address_is_throttled(
    tmp_path: Path, environ: dict[str, str]
) -> None:
    with start_taxii(tmp_path, environ, trusted_proxies="1", auth_failure_delay="0.01") as taxii:
        taxii.state.accounts._sleep = lambda seconds: None
        for _ in range(3):
            response = requests.get(
                taxii.api_root,
                auth=("twcert", "wrong"),
                headers={**TAXII, "X-Forwarded-For": "203.0.113.50"},
                timeout=30,
            )
            assert response.status_code == 401
        throttle = taxii.state.accounts.throttle
        assert throttle.delay("someone", "203.0.113.50") == 0.08
        assert throttle.delay("someone", "127.0.0.1") == 0.01  # not the proxy's own address
