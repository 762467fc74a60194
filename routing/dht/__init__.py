"""The Kademlia DHT with signed dictionary records (issue 3).

Pure pieces: `ids` (160-bit ids from peer ids and keys), `table` (k-buckets), `storage`
(bounded record dictionaries), `ratelimit` (per-peer token buckets), `lookup` (the iterative
lookup state machine), `protocol` (message layouts and strict parsing). Over the RPC host:
`node.DHTNode`, and `launch` to build a running node. Records are `routing.records`.
No hivemind at run time (see `ids.py` for why); nothing here imports torch.
"""

from ..records import DHTValue as DHTValue
from ..records import RecordPolicy as RecordPolicy
from ..records import SignedRecord as SignedRecord
from .config import DHTConfig as DHTConfig
from .errors import BootstrapError as BootstrapError
from .errors import DHTError as DHTError
from .errors import MalformedReplyError as MalformedReplyError
from .errors import RecordRejectedError as RecordRejectedError
from .launch import open_dht_node as open_dht_node
from .launch import serve_dht_node as serve_dht_node
from .node import DHTNode as DHTNode
from .node import LookupResult as LookupResult
from .node import ValueResult as ValueResult
