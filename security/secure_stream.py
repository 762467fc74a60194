"""`SecureStream`: an encrypted, authenticated trio stream over any other trio stream.

Theory of operation
-------------------
A SecureStream wraps a transport stream (TCP, an in-memory stream, ...) and a pure engine:
`SwarmHandshake` for the first three messages, then two Noise `CipherState` objects, one per
direction. The engine never does I/O; this class only moves bytes between it and the
transport, the way `trio.SSLStream` drives `ssl.SSLObject`.

Wire format. Every message is a frame: a 2-byte big-endian length, then that many bytes.
The three handshake messages are frames (each capped at `MAX_HANDSHAKE_MESSAGE` bytes,
checked from the header before the body is buffered). After the handshake every frame
carries one Noise transport message: ChaCha20-Poly1305 ciphertext with a 16-byte tag, at
most `max_message_size` (65,535) bytes, so at most 65,519 plaintext bytes per frame.
`send_all` cuts its data into frames, encrypts them, and hands them to the transport in
batches of up to `SEND_BATCH` bytes (one transport `send_all` for a small message).
`receive_some` reads from the transport, decrypts every whole frame it has, and returns
at most `max_bytes` of plaintext, keeping the rest for the next call.

The handshake runs once, on the first `send_all`/`receive_some`, or when `do_handshake` is
called; concurrent callers wait for it. It must finish within `handshake_timeout` seconds
or `HandshakeTimeoutError` is raised. Protocol failures raise the typed `HandshakeError`
subclasses; a transport that breaks or reaches EOF during the handshake raises
`HandshakeConnectionError` (a HandshakeError and a `trio.BrokenResourceError`). A failed
handshake closes the transport.

Errors after the handshake. A frame that fails authentication, or a connection that ends
in the middle of a frame, closes the transport and raises `DecryptionError`. A stream is
OK, BROKEN or CLOSED: calls on a BROKEN stream raise `trio.BrokenResourceError` (chained to
what broke it), calls after our own `aclose` raise `trio.ClosedResourceError`. A
`send_all` interrupted part way (cancelled, or the transport failed) leaves the stream
BROKEN, since the remote may have received part of a frame. Two tasks calling `send_all`
(or `wait_send_all_might_not_block`) at once, or two calling `receive_some`, get
`trio.BusyResourceError`; one sender and one receiver may run concurrently.

Noise has no close message: a clean EOF at a frame boundary is reported as EOF (b""). The
protocols above (RPC) carry their own end-of-message markers, so a cut connection cannot
pass for a complete message. `send_eof` is not supported (this is not a
HalfCloseableStream).
"""

from __future__ import annotations

import enum
import logging
import operator

import trio

from .errors import (
    DecryptionError,
    FrameTooLargeError,
    HandshakeConnectionError,
    HandshakeError,
    HandshakeTimeoutError,
)
from .framing import (
    HEADER,
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    FrameReader,
    encode_frame,
    encrypt_frames,
)
from .handshake import MAX_HANDSHAKE_MESSAGE, PROTOCOL_VERSION, HandshakeResult, SwarmHandshake
from .identity import Identity, PeerId
from .noise.cipher_state import CipherState
from .noise.primitives import TAG_SIZE, KeyPair

__all__ = ["SecureStream"]

logger = logging.getLogger(__name__)

RECEIVE_SIZE = 1 << 18  # bytes asked from the transport per receive: 4 full frames
SEND_BATCH = 1 << 20  # wire bytes handed to the transport per send_all


class _State(enum.Enum):
    OK = "ok"
    BROKEN = "broken"
    CLOSED = "closed"


class _ConflictDetector:
    """Raises BusyResourceError when two tasks enter the same side at once."""

    __slots__ = ("_busy", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._busy = False

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(self._message)
        self._busy = True

    def __exit__(self, *exc_info: object) -> None:
        self._busy = False


class SecureStream(trio.abc.Stream):
    """A Noise-encrypted stream authenticated by the peers' Ed25519 identities."""

    def __init__(
        self,
        transport_stream: trio.abc.Stream,
        identity: Identity,
        *,
        initiator: bool,
        expected_peer: PeerId | None = None,
        handshake_timeout: float = 10.0,
        max_message_size: int = MAX_FRAME_SIZE,
        static_key: KeyPair | None = None,
        version: bytes = PROTOCOL_VERSION,
    ) -> None:
        """`max_message_size`: largest transport frame (Noise message) sent or accepted,
        in TAG_SIZE + 1 ..= 65535; both sides must use the same. `static_key` and `version`
        are for tests; by default the per-process Noise key and the current version."""
        if not TAG_SIZE < max_message_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_message_size must be in {TAG_SIZE + 1}..{MAX_FRAME_SIZE}")
        if handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        self.transport_stream = transport_stream
        self._handshake = SwarmHandshake(
            identity,
            initiator=initiator,
            expected_peer=expected_peer,
            static_key=static_key,
            version=version,
        )
        self._handshake_timeout = handshake_timeout
        self._max_message_size = max_message_size
        self._max_plaintext = max_message_size - TAG_SIZE
        self._state = _State.OK
        self._broken_by: BaseException | None = None
        self._handshake_lock = trio.Lock()
        self._result: HandshakeResult | None = None
        self._send: CipherState | None = None
        self._receive: CipherState | None = None
        self._reader = FrameReader(MAX_HANDSHAKE_MESSAGE)
        self._leftover = memoryview(b"")
        self._eof = False
        self._send_conflict = _ConflictDetector("another task is sending on this SecureStream")
        self._receive_conflict = _ConflictDetector("another task is receiving on this SecureStream")

    # -- status ----------------------------------------------------------------------------

    @property
    def remote_peer_id(self) -> PeerId:
        """The authenticated remote peer; raises RuntimeError before the handshake."""
        if self._result is None:
            raise RuntimeError("the handshake has not completed")
        return self._result.remote_peer_id

    @property
    def handshake_hash(self) -> bytes:
        """The Noise handshake hash (channel binding); after the handshake."""
        if self._result is None:
            raise RuntimeError("the handshake has not completed")
        return self._result.handshake_hash

    def _check_status(self) -> None:
        if self._state is _State.OK:
            return
        if self._state is _State.CLOSED:
            raise trio.ClosedResourceError("this SecureStream was closed")
        raise trio.BrokenResourceError("this SecureStream is broken") from self._broken_by

    def _break(self, reason: BaseException) -> None:
        if self._state is _State.OK:
            self._state = _State.BROKEN
            self._broken_by = reason

    async def _break_and_close(self, reason: BaseException) -> None:
        self._break(reason)
        await trio.aclose_forcefully(self.transport_stream)

    def _transport_error(self, error: BaseException) -> BaseException:
        """What to raise for a transport error: Closed if we closed, else it breaks us."""
        if self._state is _State.CLOSED:
            return trio.ClosedResourceError("this SecureStream was closed")
        self._break(error)
        return error

    # -- handshake -------------------------------------------------------------------------

    async def do_handshake(self) -> None:
        """Run the handshake now if it has not run yet (idempotent)."""
        self._check_status()
        if self._result is not None:
            await trio.lowlevel.checkpoint()
            return
        await self._ensure_handshake()

    async def _ensure_handshake(self) -> None:
        if self._result is not None:
            return
        async with self._handshake_lock:
            self._check_status()  # another task's attempt may have failed meanwhile
            if self._result is not None:
                return
            try:
                with trio.fail_after(self._handshake_timeout):
                    result = await self._exchange_handshake()
            except trio.TooSlowError as error:
                timeout = HandshakeTimeoutError(
                    f"handshake did not finish within {self._handshake_timeout} s"
                )
                await self._break_and_close(timeout)
                raise timeout from error
            except HandshakeError as error:
                logger.debug("handshake failed: %s", error)
                await self._break_and_close(error)
                raise
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                failure = self._transport_error(error)
                if isinstance(failure, trio.ClosedResourceError):
                    raise failure from None
                wrapped = HandshakeConnectionError(
                    f"transport failed during the handshake: {error}"
                )
                await self._break_and_close(wrapped)
                raise wrapped from error
            except BaseException as error:  # cancelled: the handshake cannot resume
                self._break(error)
                raise
            self._result = result
            self._send, self._receive = result.send, result.receive
            self._reader.max_size = self._max_message_size
            logger.debug("secure channel with %s", result.remote_peer_id.short())

    async def _exchange_handshake(self) -> HandshakeResult:
        handshake = self._handshake
        while not handshake.is_complete:
            if handshake.is_our_turn:
                await self.transport_stream.send_all(encode_frame(handshake.write_message()))
            else:
                handshake.read_message(await self._receive_handshake_frame())
        return handshake.result()

    async def _receive_handshake_frame(self) -> bytes:
        reader = self._reader
        while True:
            try:
                frame = reader.next_frame()
            except FrameTooLargeError as error:
                raise HandshakeError(f"oversize handshake message: {error}") from error
            if frame is not None:
                return frame
            data = await self.transport_stream.receive_some(RECEIVE_SIZE)
            if not data:
                raise HandshakeConnectionError(
                    "the remote closed the connection during the handshake "
                    "(it may have rejected our version or identity)"
                )
            reader.feed(data)

    # -- sending ---------------------------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict:
            if self._state is not _State.OK:
                self._check_status()
            cipher = self._send
            if cipher is None:
                await self._ensure_handshake()
                self._check_status()
                cipher = self._send
                if cipher is None:  # unreachable after a successful handshake
                    raise trio.BrokenResourceError("no send cipher")
            if type(data) is not bytes:
                data = memoryview(data).cast("B")
            size = len(data)
            step = self._max_plaintext
            if size <= step:  # the common case: one frame, one transport call
                if not size:
                    await trio.lowlevel.checkpoint()
                    return
                ciphertext = cipher.encrypt_with_ad(b"", data)
                await self._send_wire(HEADER.pack(len(ciphertext)) + ciphertext)
                return
            view = memoryview(data)
            batch = max(step, SEND_BATCH // (step + TAG_SIZE + HEADER_SIZE) * step)
            for start in range(0, size, batch):
                await self._send_wire(encrypt_frames(cipher, view[start : start + batch], step))

    async def _send_wire(self, wire: bytes) -> None:
        try:
            await self.transport_stream.send_all(wire)
        except BaseException as error:
            if isinstance(error, trio.BrokenResourceError | trio.ClosedResourceError):
                raise self._transport_error(error) from error
            self._break(error)  # cancelled part way: the frame stream is cut
            raise

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_status()
            try:
                await self.transport_stream.wait_send_all_might_not_block()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                raise self._transport_error(error) from error

    # -- receiving -------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        with self._receive_conflict:
            if max_bytes is not None:
                max_bytes = operator.index(max_bytes)
                if max_bytes < 1:
                    raise ValueError("max_bytes must be >= 1")
            if self._state is not _State.OK:
                self._check_status()
            if self._receive is None:
                await self._ensure_handshake()
                self._check_status()
            if self._leftover:
                await trio.lowlevel.checkpoint()
                return self._take(max_bytes)
            checkpointed = False
            reader = self._reader
            while True:
                if reader.buffered:
                    try:
                        plaintext = self._decrypt_buffered()
                    except DecryptionError as error:
                        await self._break_and_close(error)
                        raise
                    if plaintext:
                        if not checkpointed:
                            await trio.lowlevel.checkpoint()
                        if max_bytes is None or len(plaintext) <= max_bytes:
                            return plaintext
                        self._leftover = memoryview(plaintext)[max_bytes:]
                        return plaintext[:max_bytes]
                if self._eof:
                    await trio.lowlevel.checkpoint()
                    return b""
                try:
                    data = await self.transport_stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as error:
                    raise self._transport_error(error) from error
                checkpointed = True
                if not data:
                    if reader.buffered:
                        truncated = DecryptionError(
                            f"connection ended inside a frame ({reader.buffered} bytes)"
                        )
                        await self._break_and_close(truncated)
                        raise truncated
                    self._eof = True
                    return b""
                reader.feed(data)

    def _take(self, max_bytes: int | None) -> bytes:
        leftover = self._leftover
        if max_bytes is None or max_bytes >= len(leftover):
            self._leftover = memoryview(b"")
            return bytes(leftover)
        self._leftover = leftover[max_bytes:]
        return bytes(leftover[:max_bytes])

    def _decrypt_buffered(self) -> bytes:
        """Decrypt every whole frame received so far; b"" if there is none."""
        cipher = self._receive
        if cipher is None:  # unreachable after a successful handshake
            raise DecryptionError("no receive cipher")
        reader = self._reader
        try:
            frame = reader.next_frame()
            if frame is None:
                return b""
            plaintext = cipher.decrypt_with_ad(b"", frame)
            frame = reader.next_frame()
            if frame is None:
                return plaintext
            plaintexts = [plaintext]
            while frame is not None:
                plaintexts.append(cipher.decrypt_with_ad(b"", frame))
                frame = reader.next_frame()
        except FrameTooLargeError as error:
            raise DecryptionError(f"invalid frame: {error}") from error
        return b"".join(plaintexts)

    # -- closing ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the transport. Noise has no close message, so this sends nothing."""
        if self._state is _State.CLOSED:
            await trio.lowlevel.checkpoint()
            return
        self._state = _State.CLOSED
        self._leftover = memoryview(b"")
        await self.transport_stream.aclose()
