"""The TAXII endpoints fuzzed from the OpenAPI document the project ships
(taxii_server/openapi.yaml): hypothesis draws an operation of the document, its path, query and
header parameters from their schemas (valid values and hostile text alike), credentials good
and bad, and bodies for POST, and sends them to the real server on a loopback port. No answer
is a 5xx; every error is TAXII JSON naming its status; every answer has the security headers."""

from __future__ import annotations

import base64
import datetime as dt
import importlib.resources
import string
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML
from taxii_helpers import PASSWORDS, RunningServer, indicator

from taxii_server.app import SECURITY_HEADERS

TAXII = "application/taxii+json;version=2.1"
DOCUMENT: dict[str, Any] = YAML(typ="safe").load(
    importlib.resources.files("taxii_server").joinpath("openapi.yaml").read_text()
)
OPERATIONS = sorted(
    (path, method)
    for path, item in DOCUMENT["paths"].items()
    for method in item
    if method in ("get", "post", "delete")
)
OBJECTS = [indicator(n) for n in range(1, 6)]

hostile_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
# what a client can send at all: visible ASCII, inner spaces and tabs
header_text = st.text(string.printable.strip("\r\n\x0b\x0c"), max_size=60).map(str.strip)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target: Any = DOCUMENT
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key]
        return dict(target)
    return node


def _value(parameter: dict[str, Any], known: dict[str, list[str]]) -> st.SearchStrategy[str]:
    """A value for ``parameter``: one the schema describes, a known one, or hostile text."""
    schema = parameter.get("schema", {})
    options: list[st.SearchStrategy[str]] = [hostile_text]
    if known.get(parameter["name"]):
        options.append(st.sampled_from(known[parameter["name"]]))
    if "examples" in schema:
        options.append(st.sampled_from([str(e) for e in schema["examples"]]))
    if "default" in schema:
        options.append(st.just(str(schema["default"])))
    if schema.get("type") == "integer":
        options.append(st.integers(-(2**70), 2**70).map(str))
    if schema.get("format") == "date-time":
        options.append(
            st.datetimes(timezones=st.just(dt.UTC)).map(
                lambda d: d.isoformat().replace("+00:00", "Z")
            )
        )
    if "pattern" in schema:
        options.append(st.from_regex(schema["pattern"], fullmatch=True))
    if parameter["in"] == "header":
        options = [header_text, *options[1:]]
    return st.one_of(options)


AUTH = st.sampled_from(
    [
        ("partner", "twcert", PASSWORDS["twcert"]),
        ("partner", "jpcert", PASSWORDS["jpcert"]),
        ("publisher", "certbr-publisher", PASSWORDS["certbr-publisher"]),
        ("wrong", "twcert", "not-the-password"),
        ("unknown", "nobody", "whatever"),
        ("none", "", ""),
    ]
)


@st.composite
def requests_from_document(draw: st.DrawFn, known: dict[str, list[str]]) -> dict[str, Any]:
    path, method = draw(st.sampled_from(OPERATIONS))
    operation = DOCUMENT["paths"][path][method]
    url = path
    params: dict[str, str] = {}
    headers: dict[str, str] = {}
    for parameter in map(_resolve, operation.get("parameters", [])):
        where = parameter["in"]
        if where != "path" and not draw(st.booleans()):
            continue
        value = draw(_value(parameter, known))
        if where == "path":
            url = url.replace("{" + parameter["name"] + "}", quote(value, safe="") or "x")
        elif where == "query":
            params[parameter["name"]] = value
        else:
            headers[parameter["name"]] = value
    if draw(st.booleans()):
        params[draw(st.sampled_from(["match[bogus]", "x", "limit", "next"]))] = draw(hostile_text)
    kind, user, password = draw(AUTH)
    if kind != "none" and "security" not in operation:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    elif draw(st.booleans()):
        headers["Authorization"] = draw(header_text)
    body: bytes | None = None
    if method == "post":
        headers["Content-Type"] = draw(st.sampled_from([TAXII, "application/json"]) | header_text)
        body = draw(
            st.binary(max_size=200)
            | st.just(orjson.dumps({"objects": OBJECTS[:2]}))
            | st.builds(
                lambda objs: orjson.dumps({"objects": objs}),
                st.lists(
                    st.dictionaries(st.sampled_from(["type", "id", "spec_version"]), hostile_text),
                    max_size=3,
                ),
            )
        )
    return {
        "method": method.upper(),
        "url": url,
        "params": params,
        "headers": headers,
        "data": body,
    }


def _publish(taxii: RunningServer, collection: str) -> None:
    response = requests.post(
        taxii.collection_url(collection) + "objects/",
        data=orjson.dumps({"objects": OBJECTS}),
        headers={"Accept": TAXII, "Content-Type": TAXII},
        auth=("certbr-publisher", PASSWORDS["certbr-publisher"]),
        timeout=30,
    )
    assert response.status_code == 202, response.text


def test_openapi_document_is_served_and_covers_every_taxii_route(taxii: RunningServer) -> None:
    served = requests.get(taxii.url + "/openapi.yaml", timeout=30)
    assert served.status_code == 200
    assert YAML(typ="safe").load(served.text) == DOCUMENT
    rules = {
        rule.rule.replace("<string:", "{").replace(">", "}")
        for rule in taxii.app.url_map.iter_rules()
        if rule.endpoint not in ("static", "metrics")
    }
    assert rules == set(DOCUMENT["paths"])


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_fuzzed_requests_never_fail_the_server(taxii: RunningServer) -> None:
    config = taxii.state.partners.current()
    collections = [c for c in config.collections.values()]
    _publish(taxii, collections[0].id)
    known = {
        "api_root": ["feeds"],
        "collection_id": [c.id for c in collections] + [c.alias for c in collections],
        "object_id": [obj["id"] for obj in OBJECTS],
    }
    session = requests.Session()
    seen: dict[int, int] = {}

    @given(request=requests_from_document(known))
    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    def fuzz(request: dict[str, Any]) -> None:
        response = session.request(
            request["method"],
            taxii.url + request["url"],
            params=request["params"],
            headers=request["headers"],
            data=request["data"],
            timeout=30,
            allow_redirects=False,
        )
        status = response.status_code
        seen[status] = seen.get(status, 0) + 1
        probe = request["url"] in ("/healthz", "/readyz")  # 503 says "not ready"
        assert status < 500 or (probe and status == 503), (request, response.text)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (request, name)
        if status >= 400 and not probe:
            assert response.headers["Content-Type"].startswith("application/taxii+json")
            error = response.json()
            assert error["http_status"] == str(status) and error["title"], error

    fuzz()
    assert seen.get(200, 0) > 0 and any(400 <= s < 500 for s in seen), seen
