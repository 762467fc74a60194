"""The network layer: wire messages, RPC over secure streams, the DHT, swarm records, routes.

Rule: the names other packages need are re-exported here as `from .module import Name as
Name`; subpackages (`routing.rpc`, `routing.dht`) export their own. Importing does nothing
and loads neither torch nor hivemind.
"""

from .address import PeerAddress as PeerAddress
from .errors import AddressError as AddressError
from .errors import CallTimeoutError as CallTimeoutError
from .errors import ConnectionLostError as ConnectionLostError
from .errors import HandlerError as HandlerError
from .errors import MessageTooLargeError as MessageTooLargeError
from .errors import PeerUnreachableError as PeerUnreachableError
from .errors import PeerUnresponsiveError as PeerUnresponsiveError
from .errors import ProtocolError as ProtocolError
from .errors import RemoteError as RemoteError
from .errors import RoutingError as RoutingError
from .transport import TcpTransport as TcpTransport
from .transport import Transport as Transport
