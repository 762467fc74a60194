"""Peers reached where they say: `swarm peer --public-port` behind a forwarded port,
`--public-host`, and `--via` a circuit relay, as `swarm` processes on 127.0.0.1 with a
client generating through them (the addresses found for a wildcard host are tested in
`tests/routing/test_public_address.py`, circuits alone in `tests/routing/rpc/test_circuit.py`).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from routing.address import PeerAddress
from routing.rpc import CircuitConfig
from swarm import DistributedModelForCausalLM
from swarm.cli import build_parser, main
from swarm.commands.keys import circuit_relay
from swarm.errors import SwarmError
from tests.support.port_forward import PortForward
from tests.support.ports import free_port
from tests.support.processes import SwarmProcess, swarm_processes
from tests.support.tiny_model import write_tiny_model

from .test_model import _until

pytestmark = pytest.mark.slow

READY = 60.0  # seconds for a process to print its address


def test_a_peer_behind_a_forwarded_port_is_reached_through_it(tmp_path: Path) -> None:
    """The DHT node announces the name it is given; the second peer listens on one port and
    announces the forwarded one, which the client dials (the tokens are transformers') and
    the DHT node dials back when the peer asks whether others reach it."""
    checkpoint = write_tiny_model(tmp_path / "tiny-public", num_layers=4)
    hidden_port = free_port()
    with swarm_processes() as started, PortForward(hidden_port) as forward:
        dht = SwarmProcess(["dht", "--public-host", "localhost"])
        started.append(dht)
        bootstrap = dht.wait_ready(READY)
        assert bootstrap.startswith("localhost:")
        common = ["peer", str(checkpoint), "--initial-peers", bootstrap]
        first = SwarmProcess([*common, "--blocks", "0:2"])
        behind = SwarmProcess([*common, "--blocks", "2:4", "--port", str(hidden_port),
                               "--public-port", str(forward.port)])  # fmt: skip
        started += [first, behind]
        assert PeerAddress.parse(first.wait_ready(READY)).host == "127.0.0.1"
        announced = PeerAddress.parse(behind.wait_ready(READY))
        assert (announced.host, announced.port) == ("127.0.0.1", forward.port)
        _generates_as_transformers(checkpoint, bootstrap)
        assert forward.connections >= 1  # the client dialled the forwarded port
        _wait_for_log(behind, f"others reach us at {announced}")  # the DHT node dialled back


def test_a_peer_that_listens_nowhere_serves_through_a_circuit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`swarm peer --via` a `swarm dht --circuit-relay`: the peer opens no port, its address
    is a circuit through the DHT node, and the client and the first peer reach it there:
    the tokens are transformers'. `swarm status` shows the relay, its one listener and the
    peer behind it."""
    checkpoint = write_tiny_model(tmp_path / "tiny-circuit", num_layers=4)
    with swarm_processes() as started:
        bootstrap, behind = _relay_and_two_peers(started, checkpoint, "--via", "{relay}")
        assert "listening through the relay" in behind.stderr()
        assert " listening on " not in behind.stderr()  # no port of its own
        _generates_as_transformers(checkpoint, bootstrap)

        assert main(["status", "--initial-peers", bootstrap, "--json"]) == 0
        state = json.loads(capsys.readouterr().out)
        relay = PeerAddress.parse(bootstrap).peer_id.to_base58()
        (listed,) = state["relays"]
        assert (listed["address"], listed["state"], listed["peers"]) == (bootstrap, "online", 1)
        assert (listed["listeners"], listed["max_listeners"], listed["max_circuits"]) == (
            1,
            64,
            256,
        )
        assert listed["circuits"] >= 1 and listed["relayed_bytes"] > 0  # the client's, at least
        assert sorted(peer["via"] or "" for peer in state["models"][0]["peers"]) == ["", relay]


def test_a_peer_others_cannot_dial_takes_a_listed_relay_by_itself(tmp_path: Path) -> None:
    """`swarm dht --circuit-relay` lists itself in the DHT. A peer that announces a port
    nobody listens at (as behind NAT) hears so from its reach check, finds the relay in
    the DHT and serves through it: its address is a circuit, and the tokens are
    transformers'."""
    checkpoint = write_tiny_model(tmp_path / "tiny-auto", num_layers=4)
    with swarm_processes() as started:
        closed = str(free_port())
        bootstrap, unreachable = _relay_and_two_peers(started, checkpoint, "--public-port", closed)
        assert "others cannot reach us" in unreachable.stderr()
        _generates_as_transformers(checkpoint, bootstrap)


def test_a_peer_whose_relay_dies_moves_to_another_and_announces_it(tmp_path: Path) -> None:
    """Two relays listed; the peer that others cannot dial takes one. Killed, that relay is
    traded for the other within seconds, the peer announces its new address, and a client
    that joins through the surviving relay gets transformers' tokens."""
    checkpoint = write_tiny_model(tmp_path / "tiny-move", num_layers=4)
    with swarm_processes() as started:
        relays = [SwarmProcess(["dht", "--circuit-relay"])]
        started += relays
        bootstrap = relays[0].wait_ready(READY)
        relays.append(SwarmProcess(["dht", "--circuit-relay", "--initial-peers", bootstrap]))
        started.append(relays[1])
        addresses = [PeerAddress.parse(bootstrap), PeerAddress.parse(relays[1].wait_ready(READY))]
        every = [str(address) for address in addresses]
        common = ["peer", str(checkpoint), "--initial-peers", *every]
        first = SwarmProcess([*common, "--blocks", "0:2"])
        unreachable = SwarmProcess([*common, "--blocks", "2:4", "--public-port", str(free_port())])
        started += [first, unreachable]
        first.wait_ready(READY)
        used = addresses.index(PeerAddress.parse(unreachable.wait_ready(READY)).relay)
        relays[used].stop(signal.SIGKILL)
        _wait_for_log(unreachable, f"announced our new address, {addresses[1 - used]}/")
        _generates_as_transformers(checkpoint, str(addresses[1 - used]))


def _relay_and_two_peers(
    started: list[SwarmProcess], checkpoint: Path, *second: str
) -> tuple[str, SwarmProcess]:
    """`swarm dht --circuit-relay` and two peers, of blocks 0:2 and of blocks 2:4 with the
    arguments `second` ("{relay}" stands for the relay's address), ready: the relay's
    address, and the second peer, whose address must be a circuit through it."""
    relay = SwarmProcess(["dht", "--circuit-relay"])
    started.append(relay)
    bootstrap = relay.wait_ready(READY)
    common = ["peer", str(checkpoint), "--initial-peers", bootstrap]
    first = SwarmProcess([*common, "--blocks", "0:2"])
    extra = [argument.format(relay=bootstrap) for argument in second]
    behind = SwarmProcess([*common, "--blocks", "2:4", *extra])
    started += [first, behind]
    first.wait_ready(READY)
    assert PeerAddress.parse(behind.wait_ready(READY)).relay == PeerAddress.parse(bootstrap)
    return bootstrap, behind


def _wait_for_log(process: SwarmProcess, text: str) -> None:
    """Poll the process's log until `text` is in it (bounded by READY)."""
    assert _until(lambda: text in process.stderr(), READY), process.stderr()


def _generates_as_transformers(checkpoint: Path, bootstrap: str) -> None:
    """8 greedy tokens through the swarm equal transformers' on the same checkpoint."""
    prompt = torch.tensor([[5, 17, 42, 7]])
    with DistributedModelForCausalLM.from_pretrained(
        checkpoint, initial_peers=[bootstrap]
    ) as model:
        tokens = model.generate(prompt, max_new_tokens=8)
    local = AutoModelForCausalLM.from_pretrained(checkpoint)
    expected = local.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8,
                              do_sample=False)  # fmt: skip
    assert tokens.tolist() == expected.tolist()


def test_the_command_line_relays_circuits_at_the_rate_asked() -> None:
    parser = build_parser()
    for command in (["dht"], ["peer", "MODEL"]):
        assert circuit_relay(parser.parse_args(command)) is None
        args = parser.parse_args([*command, "--circuit-relay", "--circuit-rate", "2.5"])
        assert circuit_relay(args) == CircuitConfig(max_bytes_per_second=2.5e6)
        args = parser.parse_args([*command, "--circuit-relay", "--circuit-peer-rate", "0.5"])
        assert circuit_relay(args) == CircuitConfig(max_peer_bytes_per_second=0.5e6)
        assert circuit_relay(parser.parse_args([*command, "--circuit-relay"])) == CircuitConfig()
        for option in ("--circuit-rate", "--circuit-peer-rate"):
            with pytest.raises(SwarmError, match=f"{option} must be more than 0"):
                circuit_relay(parser.parse_args([*command, "--circuit-relay", option, "0"]))
