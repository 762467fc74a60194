"""The DHT's messages: method names, header layouts, and strict parsing of both directions.

Every request header carries `sender`: `[host, port]` where the caller listens (or nil for a
client that does not serve). It carries no peer id: the receiver pairs it with the peer id
the secure channel authenticated, so nobody can put another peer's id in our table.

    dht.ping        {}                          -> {}
    dht.find_node   {target: 20 bytes}          -> {nodes: [node, ...]}
    dht.find_value  {key: str}                  -> {nodes: [...], records: [record, ...]}
    dht.store       {key: str, record: record}  -> {stored: bool}

A node is `[host, port, peer id digest]` (binary, not `HOST:PORT/PEER_ID` text: base58 is
the slowest thing a lookup would do). A record is `SignedRecord.to_wire()`; its key is the
request's key. Requests
that do not parse are refused with a `HandlerError` ("bad_request"); replies that do not
parse raise `MalformedReplyError`. Counts are checked before anything is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from security import PeerId, SecurityError

from ..address import PeerAddress
from ..errors import AddressError, HandlerError
from ..records import RecordPolicy, RecordRejectedError, SignedRecord, check_key
from .errors import MalformedReplyError
from .ids import ID_BYTES

PING = "dht.ping"
FIND_NODE = "dht.find_node"
FIND_VALUE = "dht.find_value"
STORE = "dht.store"

MAX_HOST_CHARS = 255


def encode_node(address: PeerAddress) -> list[Any]:
    return [address.host, address.port, address.peer_id.digest]


def encode_sender(address: PeerAddress | None) -> list[Any] | None:
    return None if address is None else [address.host, address.port]


def _address(host: Any, port: Any, peer_id: PeerId) -> PeerAddress | None:
    if not isinstance(host, str) or not 0 < len(host) <= MAX_HOST_CHARS:
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    try:
        return PeerAddress(host, port, peer_id)
    except (AddressError, ValueError):
        return None


def bad_request(message: str) -> HandlerError:
    return HandlerError("bad_request", message)


# --- requests, as the server reads them ---------------------------------------------------


def request_sender(header: Mapping[str, Any], authenticated: PeerId) -> PeerAddress | None:
    """The caller's listening address (with its authenticated peer id), if it gave one."""
    sender = header.get("sender")
    if not isinstance(sender, list) or len(sender) != 2:
        return None
    return _address(sender[0], sender[1], authenticated)


def request_target(header: Mapping[str, Any]) -> int:
    target = header.get("target")
    if not isinstance(target, bytes) or len(target) != ID_BYTES:
        raise bad_request(f"target must be {ID_BYTES} bytes")
    return int.from_bytes(target, "big")


def request_key(header: Mapping[str, Any], policy: RecordPolicy) -> str:
    key = header.get("key")
    if not isinstance(key, str):
        raise bad_request("key must be a string")
    try:
        check_key(key, policy)
    except RecordRejectedError as error:
        raise bad_request(error.reason) from None
    return key


def request_record(header: Mapping[str, Any], policy: RecordPolicy) -> SignedRecord:
    key = request_key(header, policy)
    try:
        return SignedRecord.from_wire(key, header.get("record"), policy)
    except (RecordRejectedError, SecurityError) as error:
        raise HandlerError("record_rejected", str(error)) from None


# --- replies, as the client reads them ----------------------------------------------------


def reply_nodes(header: Mapping[str, Any], max_nodes: int) -> list[PeerAddress]:
    nodes = header.get("nodes")
    if not isinstance(nodes, list):
        raise MalformedReplyError("nodes must be a list")
    if len(nodes) > max_nodes:
        raise MalformedReplyError(f"{len(nodes)} nodes in a reply, at most {max_nodes}")
    addresses = []
    for node in nodes:
        if not isinstance(node, list) or len(node) != 3:
            raise MalformedReplyError("a node is [host, port, peer id]")
        host, port, digest = node
        if not isinstance(digest, bytes) or len(digest) != 32:
            raise MalformedReplyError("a node's peer id is 32 bytes")
        address = _address(host, port, PeerId(digest))
        if address is None:
            raise MalformedReplyError(f"unusable node address {host!r}:{port!r}")
        addresses.append(address)
    return addresses


def reply_records(
    key: str, header: Mapping[str, Any], policy: RecordPolicy, max_records: int
) -> list[SignedRecord]:
    """Parse (not verify) the records of a find_value reply."""
    records = header.get("records", [])
    if not isinstance(records, list):
        raise MalformedReplyError("records must be a list")
    if len(records) > max_records:
        raise MalformedReplyError(f"{len(records)} records in a reply, at most {max_records}")
    try:
        return [SignedRecord.from_wire(key, item, policy) for item in records]
    except (RecordRejectedError, SecurityError) as error:
        raise MalformedReplyError(f"bad record in reply: {error}") from None


def reply_stored(header: Mapping[str, Any]) -> bool:
    stored = header.get("stored")
    if not isinstance(stored, bool):
        raise MalformedReplyError("stored must be a boolean")
    return stored
