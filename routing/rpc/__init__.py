"""RPC over secure connections: unary calls and bidirectional streams between peers.

Rule: public names are re-exported here as `from .module import Name as Name`; code outside
the package imports from `routing.rpc`. Importing does nothing.
"""

from .circuit import RELAY_LOAD_FIELDS as RELAY_LOAD_FIELDS
from .circuit import CircuitConfig as CircuitConfig
from .circuit import CircuitRelay as CircuitRelay
from .circuit import RelayLoad as RelayLoad
from .circuit import ask_relay_load as ask_relay_load
from .circuit import serve_via as serve_via
from .config import RPCConfig as RPCConfig
from .config import RPCStats as RPCStats
from .host import RPCHost as RPCHost
from .packet import CallContext as CallContext
from .packet import Packet as Packet
from .packet import StreamHandler as StreamHandler
from .packet import UnaryHandler as UnaryHandler
from .reach import Reach as Reach
from .reach import ask_reach as ask_reach
from .reach import check_reach as check_reach
from .reach import log_reach as log_reach
from .stream import BidiStream as BidiStream
