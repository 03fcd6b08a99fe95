"""spampots keys: generate (published as next), list, rotate (retired keys stay), export-jwks."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from feeds.settings import Settings

Run = Callable[..., tuple[int, str, str]]


def statuses(run_cli: Run) -> dict[str, str]:
    code, out, _ = run_cli("keys", "list")
    assert code == 0
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


def test_generate_rotate_and_export(initialised: Settings, run_cli: Run) -> None:
    (first,) = statuses(run_cli)
    code, out, _ = run_cli("keys", "generate")
    assert code == 0
    second = out.split()[0]
    assert statuses(run_cli) == {first: "active", second: "next"}
    code, _, err = run_cli("keys", "generate")
    assert code == 1 and "already published as the next key" in err
    assert run_cli("keys", "rotate")[0] == 0
    assert statuses(run_cli) == {first: "retired", second: "active"}
    assert run_cli("keys", "rotate")[0] == 0  # no next key: one is made and activated
    after = statuses(run_cli)
    assert after[first] == "retired" and after[second] == "retired"
    assert list(after.values()).count("active") == 1
    code, out, _ = run_cli("keys", "export-jwks")
    jwks = orjson.loads(out)
    assert {key["kid"] for key in jwks["keys"]} == set(after)
    assert all(key["kty"] == "OKP" and key["crv"] == "Ed25519" for key in jwks["keys"])


def test_keys_need_an_initialised_store(settings: Settings, run_cli: Run) -> None:
    code, _, err = run_cli("keys", "list")
    assert code == 1 and "spampots init" in err


def test_a_revoked_key_leaves_the_jwks(initialised: Settings, run_cli: Run) -> None:
    (first,) = statuses(run_cli)
    code, _, err = run_cli("keys", "revoke", first)
    assert code == 1 and "is the active key" in err and "rotate" in err
    assert run_cli("keys", "rotate")[0] == 0
    code, out, _ = run_cli("keys", "revoke", first)
    assert code == 0 and "revoked" in out
    assert statuses(run_cli)[first] == "revoked"
    kids = {key["kid"] for key in orjson.loads(run_cli("keys", "export-jwks")[1])["keys"]}
    assert first not in kids and len(kids) == 1
    code, _, err = run_cli("keys", "revoke", "no-such-kid")
    assert code == 1 and "no signing key no-such-kid" in err
    # One kid in 64 begins with "-": still a kid, not an option.
    code, _, err = run_cli("keys", "revoke", "-AbC_no-such-kid")
    assert code == 1 and "no signing key -AbC_no-such-kid" in err
