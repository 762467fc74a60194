"""The Noise Protocol Framework core (rev 34): pure state machines, no I/O."""

from .cipher_state import CipherState as CipherState
from .handshake_state import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from .handshake_state import HandshakeState as HandshakeState
from .patterns import PATTERNS as PATTERNS
from .patterns import HandshakePattern as HandshakePattern
from .primitives import KeyPair as KeyPair
from .symmetric_state import SymmetricState as SymmetricState
