"""The swarm monitor (issue 7): a page and a JSON API showing how well the swarm covers each
model's blocks, read from the DHT like a client.

`snapshot` is the pure core (records -> `SwarmSnapshot`), `collector` reads the DHT and pings
peers, `http` serves the page, `service` wires them to an RPC host and a DHT node. Importing
this package does nothing; the names below are re-exported from the pure and trio modules.
"""

from .snapshot import Observations as Observations
from .snapshot import SwarmSnapshot as SwarmSnapshot
from .snapshot import build_snapshot as build_snapshot
