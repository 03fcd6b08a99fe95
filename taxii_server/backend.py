"""The medallion ``Backend`` over the store, seen through the requesting account.

medallion's views ask the backend for collections and check ``can_read``/``can_write`` on what
it returns; this backend answers per account (``flask.g.principal``, set by the app after
authentication), so a collection not granted to the caller does not exist for it (404, as if
absent). Pages come from :mod:`taxii_server.objects` by keyset; every read is audited.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import orjson
from flask import g, request
from medallion.backends.base import Backend
from sqlalchemy.engine import Engine

from feeds.partners import Collection
from feeds.settings import Settings
from feeds.store import write_transaction
from taxii_server.accounts import Principal
from taxii_server.audit import PollAudit
from taxii_server.errors import BadRequest, InvalidObject, NotFound
from taxii_server.objects import (
    ALL_VERSIONS,
    STIX_MEDIA_TYPE,
    add_objects,
    delete_versions,
    describe,
    format_us,
    object_exists,
    page_manifest,
    page_objects,
    to_us,
)
from taxii_server.params import (
    OBJECT_FILTERS,
    OBJECTS_FILTERS,
    VERSIONS_FILTERS,
    encode_next,
    parse_query,
)
from taxii_server.status import load_status, save_status

API_ROOT = "feeds"
TAXII_MEDIA_TYPE = "application/taxii+json;version=2.1"


def _date_headers(first_us: int | None, last_us: int | None) -> dict[str, str]:
    if first_us is None or last_us is None:
        return {}
    return {
        "X-TAXII-Date-Added-First": format_us(first_us),
        "X-TAXII-Date-Added-Last": format_us(last_us),
    }


class StoreBackend(Backend):  # type: ignore[misc]
    def __init__(
        self, engine: Engine, settings: Settings, audit: PollAudit, producer_contact: str = ""
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.audit = audit
        self.contact = producer_contact

    # -- who and where ---------------------------------------------------------------------

    @property
    def principal(self) -> Principal:
        principal: Principal = g.principal
        return principal

    def _base_url(self) -> str:
        public = str(self.settings.public_url or "")
        return public.rstrip("/") if public else request.host_url.rstrip("/")

    def collection_for(self, api_root: str, collection_id: str) -> Collection:
        """The collection if the caller may read it; else 404, the same as for none at all."""
        found = self.principal.collection(collection_id) if api_root == API_ROOT else None
        if found is None:
            raise NotFound(
                f"collection '{collection_id}' not found", hint="list yours at collections/"
            )
        return found

    def _resource(self, collection: Collection) -> dict[str, Any]:
        return {
            "id": collection.id,
            "title": collection.title,
            "description": collection.description,
            "alias": collection.alias,
            "can_read": True,
            "can_write": self.principal.is_publisher,
            "media_types": [STIX_MEDIA_TYPE.format("2.1")],
        }

    # -- medallion's Backend ---------------------------------------------------------------

    def server_discovery(self) -> dict[str, Any]:
        root = f"{self._base_url()}/{API_ROOT}/"
        discovery = {
            "title": "SpamPots partner feeds",
            "description": "Spam seen by the SpamPots honeypot sensors, per partner, "
            "as signed STIX 2.1",
            "default": root,
            "api_roots": [root],
        }
        if self.contact:
            discovery["contact"] = self.contact
        return discovery

    def get_api_root_information(self, api_root: str) -> dict[str, Any] | None:
        if api_root != API_ROOT:
            return None
        return {
            "title": "SpamPots feeds",
            "description": "One collection per partner and feed (originating, returning)",
            "versions": [TAXII_MEDIA_TYPE],
            "max_content_length": self.settings.max_request_bytes,
        }

    def get_collections(self, api_root: str) -> dict[str, Any] | None:
        if api_root != API_ROOT:
            return None
        return {"collections": [self._resource(c) for c in self.principal.readable]}

    def get_collection(self, api_root: str, collection_id: str) -> dict[str, Any] | None:
        found = self.principal.collection(collection_id) if api_root == API_ROOT else None
        return self._resource(found) if found else None

    def get_status(self, api_root: str, status_id: str) -> Any:
        if api_root != API_ROOT:
            return None
        with self.engine.connect() as connection:
            return load_status(connection, status_id, self.principal.username)

    def get_object_manifest(
        self, api_root: str, collection_id: str, filter_args: Any, allowed_filters: Any, limit: int
    ) -> tuple[dict[str, Any], dict[str, str]]:
        collection = self.collection_for(api_root, collection_id)
        query = parse_query(filter_args, collection.id, OBJECTS_FILTERS, limit)
        with self.engine.connect() as connection:
            records, more = page_manifest(connection, query)
        self.audit.record(self.principal.username, collection.id, "manifest", len(records))
        resource: dict[str, Any] = {"more": more}
        if more:
            resource["next"] = encode_next(records[-1].date_added_us)
        if records:
            resource["objects"] = [r.resource() for r in records]
        first = records[0].date_added_us if records else None
        last = records[-1].date_added_us if records else None
        return resource, _date_headers(first, last)

    def get_objects(
        self, api_root: str, collection_id: str, filter_args: Any, allowed_filters: Any, limit: int
    ) -> tuple[dict[str, Any], dict[str, str]]:
        body, headers = self.objects_envelope(api_root, collection_id, filter_args, limit)
        return orjson.loads(body), headers

    def get_object(
        self,
        api_root: str,
        collection_id: str,
        object_id: str,
        filter_args: Any,
        allowed_filters: Any,
        limit: int,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        body, headers = self.objects_envelope(
            api_root, collection_id, filter_args, limit, object_id
        )
        return orjson.loads(body), headers

    def get_object_versions(
        self,
        api_root: str,
        collection_id: str,
        object_id: str,
        filter_args: Any,
        allowed_filters: Any,
        limit: int,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        collection = self.collection_for(api_root, collection_id)
        query = parse_query(filter_args, collection.id, VERSIONS_FILTERS, limit)
        query = dataclasses.replace(query, ids=(object_id,), versions=ALL_VERSIONS)
        with self.engine.connect() as connection:
            records, more = page_manifest(connection, query)
            if not records and not object_exists(connection, collection.id, object_id):
                raise NotFound(f"object '{object_id}' not found in this collection")
        self.audit.record(self.principal.username, collection.id, "versions", len(records))
        resource: dict[str, Any] = {"more": more}
        if more:
            resource["next"] = encode_next(records[-1].date_added_us)
        if records:
            resource["versions"] = [r.version for r in records]
        first = records[0].date_added_us if records else None
        last = records[-1].date_added_us if records else None
        return resource, _date_headers(first, last)

    def delete_object(
        self,
        api_root: str,
        collection_id: str,
        object_id: str,
        filter_args: Any,
        allowed_filters: Any,
    ) -> None:
        collection = self.collection_for(api_root, collection_id)
        query = parse_query(
            filter_args,
            collection.id,
            OBJECT_FILTERS,
            self.settings.max_page_size,
            default_versions=ALL_VERSIONS,
        )
        with write_transaction(self.engine) as connection:
            deleted = delete_versions(
                connection, collection.id, object_id, query.versions, query.spec_versions
            )
        if not deleted:
            raise NotFound(f"object '{object_id}' not found in this collection")

    def add_objects(
        self, api_root: str, collection_id: str, objs: Any, request_time: dt.datetime
    ) -> dict[str, Any]:
        collection = self.collection_for(api_root, collection_id)
        objects = objs.get("objects") if isinstance(objs, dict) else None
        if not isinstance(objects, list):
            raise BadRequest(
                "the request body is not a TAXII envelope", hint='send {"objects": [...]}'
            )
        good: list[tuple[dict[str, Any], bytes]] = []
        failures: list[dict[str, str]] = []
        for obj in objects:
            try:
                describe(obj)
            except InvalidObject as error:
                object_id = obj.get("id") if isinstance(obj, dict) else None
                failures.append({"id": str(object_id or ""), "version": "", "message": str(error)})
                continue
            good.append((obj, orjson.dumps(obj)))
        status: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": "complete",
            "request_timestamp": format_us(to_us(request_time)),
            "total_count": len(objects),
            "success_count": len(good),
            "failure_count": len(failures),
            "pending_count": 0,
        }
        with write_transaction(self.engine) as connection:
            dates = add_objects(connection, collection.id, good)
            successes = []
            for (obj, _), date in zip(good, dates, strict=True):
                version = obj.get("modified", obj.get("created")) or format_us(to_us(date))
                successes.append({"id": obj["id"], "version": version})
            if successes:
                status["successes"] = successes
            if failures:
                status["failures"] = failures
            save_status(connection, status, self.principal.username, collection.id)
        return status

    # -- pages of exact bytes, for the objects views ---------------------------------------

    def objects_envelope(
        self,
        api_root: str,
        collection_id: str,
        filter_args: Any,
        limit: int,
        object_id: str | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """A TAXII envelope made of the stored bytes of each object, and its date headers."""
        collection = self.collection_for(api_root, collection_id)
        allowed = OBJECTS_FILTERS if object_id is None else OBJECT_FILTERS
        query = parse_query(filter_args, collection.id, allowed, limit)
        if object_id is not None:
            query = dataclasses.replace(query, ids=(object_id,))
        with self.engine.connect() as connection:
            rows, more = page_objects(connection, query)
            if (
                object_id is not None
                and not rows
                and not object_exists(connection, collection.id, object_id)
            ):
                raise NotFound(f"object '{object_id}' not found in this collection")
        self.audit.record(
            self.principal.username,
            collection.id,
            "objects" if object_id is None else "object",
            len(rows),
        )
        parts = [b'{"more":', b"true" if more else b"false"]
        if more:
            parts += [b',"next":"', encode_next(rows[-1][0]).encode("ascii"), b'"']
        if rows:
            parts += [b',"objects":[', b",".join(body for _, body in rows), b"]"]
        parts.append(b"}")
        first = rows[0][0] if rows else None
        last = rows[-1][0] if rows else None
        return b"".join(parts), _date_headers(first, last)
