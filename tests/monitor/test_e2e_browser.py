"""The monitor page in a real browser (headless Chromium) against a live swarm on loopback.

Two tests. The first uses stand-in peers (`tests/monitor/announcer.py`: real DHT nodes
publishing real signed announcements, with chosen throughput, version strings, hostile
markup and short record lifetimes) next to `swarm dht` and `swarm monitor`: the browser
must show both peers and a full chain; after one peer stops cleanly (it announces
`offline`), the gap within a few refresh periods; after the other is killed without a word,
its row marked unreachable (it misses the monitor's pings) and the whole model uncovered
within a few refresh periods, and no row once its records expire. The second runs real
`swarm peer` processes on a tiny model and checks the page and the gap after SIGTERM.
Screenshots go to `artifacts/`.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import ROOT, SwarmProcess, swarm_processes
from tests.support.tls import write_certificate

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts"
MODEL = "tiny-llama"
NUM_BLOCKS = 8
REFRESH = 1.0  # seconds: the page's period (the monitor reads the DHT twice per period)
PUBLISH_SLACK = 3.0  # seconds for a stopping peer to store its `offline` records
SHORT_TTL = 8.0  # the killed peer's records live this long
READY = 20.0  # seconds for a process to print its address
DASH = "\u2013"  # the page writes block ranges with an en dash


@dataclass
class Swarm:
    """Processes on 127.0.0.1, all stopped when the test ends."""

    started: list[SwarmProcess]
    bootstrap: str

    def _start(self, process: SwarmProcess) -> SwarmProcess:
        self.started.append(process)
        process.wait_ready(READY)
        return process

    def start_peer(
        self, start: int, end: int, *, throughput: float, version: str, ttl: float = 30.0
    ) -> SwarmProcess:
        """A peer serving blocks [start, end) of MODEL. Stand-in until `swarm peer` exists."""
        args = ["--initial-peers", self.bootstrap, "--model", MODEL]
        args += ["--num-blocks", str(NUM_BLOCKS), "--start", str(start), "--end", str(end)]
        args += ["--throughput", str(throughput), "--version", version, "--ttl", str(ttl)]
        return self._start(SwarmProcess(args, module="tests.monitor.announcer"))

    def start_monitor(self, refresh: float, tls: tuple[Path, Path] | None = None) -> str:
        """`swarm monitor`'s page URL (HTTPS with a certificate and its key)."""
        args = ["--initial-peers", self.bootstrap, "--refresh", str(refresh)]
        if tls is not None:
            args += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        return self._start(SwarmProcess(["monitor", *args])).address


@pytest.fixture
def swarm() -> Iterator[Swarm]:
    with swarm_processes() as started:
        dht = SwarmProcess(["dht"])
        started.append(dht)
        yield Swarm(started, dht.wait_ready(READY))


@pytest.fixture
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_the_page_follows_the_swarm(swarm: Swarm, browser: object, tmp_path: Path) -> None:
    """Over HTTPS (a self-signed certificate, which this browser context accepts)."""
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    ARTIFACTS.mkdir(exist_ok=True)
    first = swarm.start_peer(0, 5, throughput=42.5, version="0.1.0")
    # Peer-provided text must show as text, never as markup.
    hostile = "<b>v2</b>&amp;<img src=x>"
    second = swarm.start_peer(5, NUM_BLOCKS, throughput=17.0, version=hostile, ttl=SHORT_TTL)
    url = swarm.start_monitor(REFRESH, write_certificate(tmp_path))
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+/", url)

    page = browser.new_page(viewport={"width": 1280, "height": 720}, ignore_https_errors=True)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(url)

    model = page.locator(f'section.model[data-model="{MODEL}"]')
    chain = model.get_by_test_id("chain")
    rows = model.locator("tbody tr")
    period_ms = REFRESH * 1000
    expect(chain).to_have_text("Full chain", timeout=10_000)
    expect(rows).to_have_count(2)
    expect(model.locator('.cell[data-peers="1"]')).to_have_count(NUM_BLOCKS)
    expect(rows.nth(0)).to_contain_text(first.address.split("/")[0])
    expect(rows.nth(1).locator("td").nth(8)).to_have_text(hostile)
    expect(model.locator("tbody b, tbody img")).to_have_count(0)
    expect(rows.nth(0).locator("td").nth(9)).to_have_text(re.compile(r"^[\d.]+ ms$"))
    expect(page.locator("#period")).to_have_value("1")
    page.screenshot(path=str(ARTIFACTS / "monitor-desktop.png"), full_page=True)

    phone = browser.new_page(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        ignore_https_errors=True,
    )
    phone.goto(url + "?refresh=0.5")  # the period can be chosen in the address
    expect(phone.get_by_test_id("chain")).to_have_text("Full chain", timeout=10_000)
    expect(phone.locator("#period")).to_have_value("0.5")
    # The page fits the phone's width; only the peers table scrolls sideways.
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    peers_table = phone.locator(f'section.model[data-model="{MODEL}"] .table-wrap')
    assert peers_table.evaluate("el => el.scrollWidth > el.clientWidth")
    phone.screenshot(path=str(ARTIFACTS / "monitor-phone.png"), full_page=True)
    phone.close()

    # A clean stop announces `offline`: the page shows the gap within a few refreshes.
    stopped_at = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0
    expect(chain).to_have_text(
        f"Gap: blocks 0{DASH}4", timeout=3 * period_ms + PUBLISH_SLACK * 1000
    )
    gap_seconds = time.monotonic() - stopped_at
    expect(rows).to_have_count(1)
    expect(model.locator('.cell[data-peers="0"]')).to_have_count(5)
    page.screenshot(path=str(ARTIFACTS / "monitor-gap.png"), full_page=True)

    # A peer that vanishes without a word misses the monitor's pings: unreachable, covering
    # nothing, long before its records expire; its row leaves when they do. (The model stays
    # listed, uncovered, while the stopped peer's model entry lives.)
    second.stop(signal.SIGKILL)
    expect(rows.nth(0).locator("td").nth(3)).to_have_text("unreachable", timeout=4 * period_ms)
    expect(chain).to_have_text(f"Gap: blocks 0{DASH}{NUM_BLOCKS - 1}")
    page.screenshot(path=str(ARTIFACTS / "monitor-unreachable.png"), full_page=True)
    expect(rows).to_have_count(0, timeout=(SHORT_TTL + 3 * REFRESH) * 1000)
    expect(page.locator("#summary")).to_have_text("1 model · 0 peers")
    assert not problems, problems
    print(f"offline peer left the page {gap_seconds:.2f} s after SIGTERM")


def test_the_page_shows_real_peers_and_the_gap_one_leaves(browser: object, tmp_path: Path) -> None:
    """The same page over `swarm peer` processes serving a tiny model (blocks 0-1 and 2-3)."""
    from playwright.sync_api import Browser, expect

    from swarm.local_swarm import LocalSwarm
    from tests.support.tiny_model import write_tiny_model

    assert isinstance(browser, Browser)
    checkpoint = write_tiny_model(tmp_path / "tiny-monitor", num_layers=4)
    with LocalSwarm(checkpoint, [(0, 2), (2, 4)]) as swarm:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(swarm.monitor_url + f"?refresh={REFRESH}")
        model = page.locator('section.model[data-model="tiny-monitor"]')
        chain = model.get_by_test_id("chain")
        expect(chain).to_have_text("Full chain", timeout=15_000)
        expect(model.locator("tbody tr")).to_have_count(2)
        for peer in swarm.peers:
            expect(model.locator("tbody")).to_contain_text(peer.address.split("/")[0])
        assert swarm.peers[0].process.stop(signal.SIGTERM) == 0  # announces offline
        expect(chain).to_have_text(
            f"Gap: blocks 0{DASH}1", timeout=3 * REFRESH * 1000 + PUBLISH_SLACK * 1000
        )
        expect(model.locator("tbody tr")).to_have_count(1)
        page.screenshot(path=str(ARTIFACTS / "monitor-real-peers-gap.png"), full_page=True)


def test_a_peer_behind_a_circuit_shows_its_relay(browser: object) -> None:
    """The address column: a direct peer's HOST:PORT, and `via` the relay's HOST:PORT for a
    peer whose address is a circuit; the relays' table after the models: the peers behind
    each, its load as it answered, or dashes and "no reply" when it did not; a draining
    peer's state in the colours of one that takes no session yet (a snapshot served as the
    monitor serves it)."""
    from playwright.sync_api import Browser, expect

    from routing.address import PeerAddress
    from routing.announcement import PeerState
    from routing.rpc import RelayLoad
    from swarm.http_server import HttpServer
    from swarm.monitor.http import load_page, monitor_handler
    from swarm.monitor.snapshot import Observations, RelayMeasure, build_snapshot
    from swarm.trio_thread import TrioThread
    from tests.monitor.records import NOW, SwarmRecords

    assert isinstance(browser, Browser)
    records = SwarmRecords()
    records.add_model("tiny", 4)
    direct = records.peer("tiny", 0, 2)
    relay, silent = records.add_relay(4100), records.add_relay(4200)
    behind = records.behind(relay, "tiny", 2, 4)
    draining = records.peer("tiny", 0, 4, state=PeerState.DRAINING)
    load = RelayLoad(3, 2, 9, 4_500_000, max_listeners=64, max_circuits=256)
    measures = {relay: RelayMeasure(0.0021, load, NOW - 3), silent: RelayMeasure(missed=2)}
    observations = Observations(now=NOW, models=records.models, blocks=records.blocks,
                                relays=records.relays, relay_measures=measures)  # fmt: skip
    snapshot = build_snapshot(observations)
    server = HttpServer(monitor_handler(lambda: snapshot, load_page()), name="monitor")
    loop = TrioThread("monitor")
    loop.start()
    try:
        _, port = loop.start_service(server.run, "127.0.0.1", 0)
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{port}/")
        cells = {
            peer: page.locator(f'tr[data-peer="{peer}"] td').nth(1) for peer in (direct, behind)
        }
        expect(cells[direct]).to_have_text("10.0.0.7:4000", timeout=10_000)
        expect(cells[behind]).to_have_text("via 10.0.0.9:4100")
        circuit = PeerAddress("10.0.0.9", 4100, behind, relay)
        assert cells[behind].get_attribute("title") == str(circuit)
        state = page.locator(f'tr[data-peer="{draining}"] span.state')
        expect(state).to_have_text("draining")
        expect(state).to_have_class("state joining")

        section = page.locator("section#relays")
        expect(section).to_be_visible()
        expect(section.locator(".meta")).to_have_text("2 relays · 1 peer behind them")
        expect(page.locator("#summary")).to_have_text("1 model · 3 peers · 2 relays")
        rows = {peer: section.locator(f'tr[data-relay="{peer}"] td') for peer in (relay, silent)}
        answered = ["online", "1", "3 / 64", "2 / 256", "4.5 MB", "2.1 ms", "3 s ago"]
        expect(rows[relay]).to_have_text([relay.short(), "10.0.0.9:4100", *answered])
        unknown = ["unreachable", "0", *["\N{EN DASH}"] * 3, "no reply", "never"]
        expect(rows[silent]).to_have_text([silent.short(), "10.0.0.9:4200", *unknown])
        # after the models' sections
        order = page.eval_on_selector_all("main > section", "nodes => nodes.map(n => n.id)")
        assert order == ["", "relays"]
        page.screenshot(path=str(ARTIFACTS / "monitor-relays.png"), full_page=True)
    finally:
        loop.close()
