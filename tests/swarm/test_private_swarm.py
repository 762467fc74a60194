"""A private swarm (`--members FILE`): its DHT node, peers and member clients talk only to
each other. A member generates transformers' own tokens through it, from Python and from
`swarm generate`, and `swarm status` sees its peers; anyone else, with or without a members
list of its own, is refused at once with a typed error that says why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
import torch
import trio
from transformers import AutoModelForCausalLM, AutoTokenizer

from routing.address import PeerAddress
from routing.dht import BootstrapError
from routing.errors import NotAMemberError
from routing.rpc import Packet, RPCHost
from routing.transport import TcpTransport
from security import Identity
from swarm import DistributedModelForCausalLM
from swarm.cli import build_parser, main
from swarm.commands.dht import serve_dht
from swarm.commands.peer import peer_config
from tests.support.thread_swarm import ThreadSwarm
from tests.support.tiny_model import write_tiny_model

PROMPT = torch.tensor([[5, 17, 42, 7]])
MEMBER = Identity.generate()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("private") / "tiny-private", seed=11)


@pytest.fixture(scope="module")
def swarm(tiny: Path) -> Iterator[ThreadSwarm]:
    with ThreadSwarm(tiny, [(0, 2), (2, 4)], private_for=[MEMBER]) as swarm:
        yield swarm


def _greedy(tiny: Path, new_tokens: int) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(tiny)
    return model.generate(PROMPT, attention_mask=torch.ones_like(PROMPT),
                          max_new_tokens=new_tokens, do_sample=False)  # fmt: skip


def test_a_member_generates_transformers_tokens(tiny: Path, swarm: ThreadSwarm) -> None:
    assert swarm.members is not None
    with DistributedModelForCausalLM.from_pretrained(
        tiny, initial_peers=[swarm.bootstrap], identity=MEMBER, members=swarm.members
    ) as model:
        output = model.generate(PROMPT, max_new_tokens=8)
    torch.testing.assert_close(output, _greedy(tiny, 8), rtol=0, atol=0)


@pytest.mark.parametrize("own_list", [True, False], ids=["with-own-list", "public"])
def test_anyone_else_is_refused_at_once(tiny: Path, swarm: ThreadSwarm, own_list: bool) -> None:
    assert swarm.members is not None
    outsider = Identity.generate()
    members = swarm.members | {outsider.peer_id} if own_list else None
    with pytest.raises(BootstrapError, match=r"refused us: .*not_a_member"):
        DistributedModelForCausalLM.from_pretrained(
            tiny, initial_peers=[swarm.bootstrap], identity=outsider, members=members
        )


def test_the_commands_take_an_identity_and_a_members_file(
    tiny: Path,
    swarm: ThreadSwarm,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert swarm.members is not None
    key = tmp_path / "client.key"
    MEMBER.save(key)
    assert main(["identity", "show", str(key)]) == 0
    client = capsys.readouterr().out.strip()
    members = tmp_path / "members.txt"
    others = swarm.members - {MEMBER.peer_id}
    members.write_text("# the swarm\n" + "\n".join(map(str, others)) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny)
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                            do_sample=False)  # fmt: skip
    expected = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
    access = ["--initial-peers", swarm.bootstrap, "--identity", str(key), "--members", str(members)]
    generate = ["generate", str(tiny), prompt, "--max-new-tokens", "6", *access]

    assert main(generate) == 1  # the client's own key is not on the list yet
    assert "is not among the members" in capsys.readouterr().err

    members.write_text(members.read_text() + f"{client}  # the client\n")
    assert main(generate) == 0
    assert capsys.readouterr().out == expected + "\n"
    assert main(["status", "--json", *access]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["models"]
    assert sorted((p["start"], p["end"]) for p in listed["peers"]) == [(0, 2), (2, 4)]


async def test_swarm_dht_and_peer_take_the_members_file(tiny: Path, tmp_path: Path) -> None:
    """`swarm dht --members FILE` serves members only, and follows the file; `swarm peer`
    hands the file to its RPC host the same way."""
    key, guest = tmp_path / "dht.key", Identity.generate()
    node = Identity.load_or_create(key)
    members = tmp_path / "members.txt"
    members.write_text(f"{node.peer_id}\n")
    args = build_parser().parse_args(
        ["dht", "--identity", str(key), "--members", str(members), "--port", "0"]
    )
    assert peer_config(build_parser().parse_args(
        ["peer", str(tiny), "--members", str(members)])).rpc.members_file == members  # fmt: skip
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address = PeerAddress.parse(await nursery.start(serve_dht, args))
            client = RPCHost(guest, TcpTransport())
            await nursery.start(client.run_outbound)
            with pytest.raises(NotAMemberError):
                await client.call(address, "ping", Packet(), timeout=5)
            members.write_text(f"{node.peer_id}\n{guest.peer_id}\n")
            while True:  # the node reads the file again within `members_check` (5 s)
                with suppress(NotAMemberError):
                    await client.call(address, "ping", Packet(), timeout=5)
                    break
                await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
