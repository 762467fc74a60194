"""tensor_codec: exact round trips for every allowed dtype, zero copies, strict validation."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from routing.errors import ProtocolError
from routing.tensor_codec import ALLOWED_DTYPES, decode_tensor, encode_tensor
from routing.wire import Decoder, Kind, Message, encode_message


@pytest.mark.parametrize("name", sorted(ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", [(), (0, 3), (1, 1, 4096), (2, 3, 5)])
def test_round_trip_is_exact(name: str, shape: tuple[int, ...]) -> None:
    dtype = getattr(torch, name)
    tensor = (torch.randn(shape) * 100).to(dtype)
    header, body = encode_tensor(tensor)
    assert header == {"dtype": name, "shape": list(shape)}
    assert len(body) == tensor.numel() * tensor.element_size()
    for buffer in (bytes(body), bytearray(body), memoryview(bytearray(body))):
        decoded = decode_tensor(header, buffer)
        assert decoded.dtype == dtype and decoded.shape == tensor.shape
        assert torch.equal(decoded, tensor)


def test_bfloat16_bytes_are_torchs_own() -> None:
    tensor = torch.tensor([1.0, -2.5, 3.140625], dtype=torch.bfloat16)
    _, body = encode_tensor(tensor)
    reference = tensor.view(torch.int16).numpy().tobytes()  # torch's own memory layout
    assert bytes(body) == reference


def test_encode_is_zero_copy() -> None:
    tensor = torch.zeros(1, 1, 4096)
    _, body = encode_tensor(tensor)
    tensor[0, 0, 0] = 1.0
    assert bytes(body[:4]) == torch.tensor([1.0]).numpy().tobytes()


def test_encode_makes_non_contiguous_tensors_contiguous() -> None:
    tensor = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    header, body = encode_tensor(tensor)
    assert torch.equal(decode_tensor(header, body), tensor)


def test_decode_shares_writable_aligned_buffers() -> None:
    tensor = torch.randn(64, 64)
    data = encode_message(Message(Kind.RESPONSE, 2, {}, encode_tensor(tensor)[1]))
    decoder = Decoder()
    decoder.feed(data[:10])
    (message,) = decoder.feed(data[10:])  # assembled: writable and 8-byte aligned
    decoded = decode_tensor({"dtype": "float32", "shape": [64, 64]}, message.payload)
    assert torch.equal(decoded, tensor)
    payload = message.payload
    assert isinstance(payload, memoryview) and not payload.readonly
    payload[0:4] = torch.tensor([7.0]).numpy().tobytes()
    assert decoded[0, 0].item() == 7.0  # same memory


def test_decode_copies_read_only_and_unaligned_buffers() -> None:
    tensor = torch.randn(16)
    _, body = encode_tensor(tensor)
    header = {"dtype": "float32", "shape": [16]}
    data = bytes(body)
    decoded = decode_tensor(header, data)
    decoded[0] = 0.0  # writable, and the bytes object is untouched
    assert data == bytes(body)
    unaligned = memoryview(bytearray(b"x" + bytes(body)))[1:]
    assert torch.equal(decode_tensor(header, unaligned), tensor)


@pytest.mark.parametrize(
    "header",
    [
        {"dtype": "complex64", "shape": [2]},
        {"dtype": "__class__", "shape": [2]},
        {"dtype": 5, "shape": [2]},
        {"shape": [2]},
        {"dtype": "float32", "shape": [3]},  # 12 bytes expected
        {"dtype": "float32", "shape": [-2, -1]},
        {"dtype": "float32", "shape": [2.0]},
        {"dtype": "float32", "shape": "2"},
        {"dtype": "float32", "shape": [1] * 9 + [2]},
        {"dtype": "float32", "shape": [2**62, 2**62, 0, 2]},
        {"dtype": "float32", "shape": [True, 2]},
    ],
)
def test_bad_headers_raise_protocol_error(header: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        decode_tensor(header, bytes(8))


def test_encode_refuses_unsupported_dtypes() -> None:
    with pytest.raises(ValueError):
        encode_tensor(torch.zeros(2, dtype=torch.complex64))


def test_importing_routing_does_not_import_torch() -> None:
    code = (
        "import sys, routing, routing.wire, routing.rpc, routing.transport, "
        "routing.memory_network, routing.address, routing.tensor_codec; "
        "print('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["False", "False"]
