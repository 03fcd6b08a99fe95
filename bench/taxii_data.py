"""Data generator for the TAXII benchmarks: feed-like STIX 2.1 objects, deterministic by seed.

Per spam source, the four objects the publisher emits: an ``ipv4-addr``, an ``observed-data``
over it, an ``indicator`` for it and the ``relationship`` (indicator based-on observed-data),
with the producer as ``created_by_ref`` and a TLP marking, so sizes match the real feed.

    .venv/bin/python bench/taxii_data.py --objects 8 | head
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import orjson

PRODUCER = "identity--8f6c7c7e-3a46-5d3a-9d0a-2a6f1f2b7c11"
TLP_AMBER = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421"
STIX_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")


def _source(rng: random.Random, number: int) -> list[dict[str, Any]]:
    # unique per source, so every generated object is a distinct object in the collection
    address = (
        f"{11 + number // 16_777_216}.{number // 65_536 % 256}.{number // 256 % 256}.{number % 256}"
    )
    day = rng.randint(1, 28)
    stamp = f"2026-11-{day:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00.000Z"

    def random_id(kind: str) -> str:
        return f"{kind}--{uuid.UUID(int=rng.getrandbits(128), version=4)}"

    ip_key = orjson.dumps({"value": address}).decode()
    ip = {
        "type": "ipv4-addr",
        "spec_version": "2.1",
        "id": f"ipv4-addr--{uuid.uuid5(STIX_NAMESPACE, ip_key)}",
        "value": address,
    }
    common = {
        "spec_version": "2.1",
        "created": stamp,
        "modified": stamp,
        "created_by_ref": PRODUCER,
        "object_marking_refs": [TLP_AMBER],
    }
    observed = {
        "type": "observed-data",
        "id": random_id("observed-data"),
        **common,
        "first_observed": stamp,
        "last_observed": stamp,
        "number_observed": rng.randint(1, 5000),
        "object_refs": [ip["id"]],
    }
    indicator = {
        "type": "indicator",
        "id": random_id("indicator"),
        **common,
        "name": f"Spam source {address}",
        "description": "Injected spam into a SpamPots sensor (open proxy abuse)",
        "indicator_types": ["malicious-activity"],
        "pattern_type": "stix",
        "pattern": f"[ipv4-addr:value = '{address}']",
        "valid_from": stamp,
        "valid_until": f"2026-12-{day:02d}T00:00:00.000Z",
        "confidence": 85,
    }
    relationship = {
        "type": "relationship",
        "id": random_id("relationship"),
        **common,
        "relationship_type": "based-on",
        "source_ref": indicator["id"],
        "target_ref": observed["id"],
    }
    return [ip, observed, indicator, relationship]


def _report(rng: random.Random, refs: list[str]) -> dict[str, Any]:
    stamp = "2026-11-30T12:00:00.000Z"
    return {
        "type": "report",
        "spec_version": "2.1",
        "id": f"report--{uuid.UUID(int=rng.getrandbits(128), version=4)}",
        "created": stamp,
        "modified": stamp,
        "created_by_ref": PRODUCER,
        "object_marking_refs": [TLP_AMBER],
        "name": "SpamPots publication batch",
        "published": stamp,
        "object_refs": refs,
    }


def generate_objects(
    count: int, seed: int = 1, batch: int = 10_000, first_source: int = 0
) -> Iterator[tuple[dict[str, Any], bytes]]:
    """``count`` objects as (dict, compact JSON bytes), the form add_objects takes; every
    ``batch``-th is a ``report``, as the publisher ends each batch (its ``object_refs`` cut to
    the last 20 objects: a real one lists the whole batch and carries its signed manifest).
    Sources are numbered from ``first_source``: other numbers, other addresses and objects."""
    rng = random.Random(seed)
    made = 0
    number = first_source
    recent: list[str] = []
    while made < count:
        for obj in _source(rng, number):
            if made == count:
                return
            if (made + 1) % batch == 0:
                obj = _report(rng, recent[-20:])
            recent = [*recent[-19:], obj["id"]]
            yield obj, orjson.dumps(obj)
            made += 1
        number += 1


def main() -> None:
    parser = argparse.ArgumentParser(description="print generated objects, one JSON a line")
    parser.add_argument("--objects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    for _, body in generate_objects(args.objects, args.seed):
        sys.stdout.buffer.write(body + b"\n")


if __name__ == "__main__":
    main()
