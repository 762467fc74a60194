"""Identity keys, the Noise handshake and encrypted framing: the swarm's security layer.

Rule: every public name is re-exported here as `from .module import Name as Name`; code
outside the package imports from `security`, never from its modules. Importing does nothing.
"""

from .errors import BadSignatureError as BadSignatureError
from .errors import DecryptionError as DecryptionError
from .errors import FrameTooLargeError as FrameTooLargeError
from .errors import HandshakeConnectionError as HandshakeConnectionError
from .errors import HandshakeError as HandshakeError
from .errors import HandshakeTimeoutError as HandshakeTimeoutError
from .errors import InvalidPeerIdError as InvalidPeerIdError
from .errors import KeyFileError as KeyFileError
from .errors import MembersFileError as MembersFileError
from .errors import NoiseStateError as NoiseStateError
from .errors import NonceExhaustedError as NonceExhaustedError
from .errors import PeerIdMismatchError as PeerIdMismatchError
from .errors import ProtocolVersionError as ProtocolVersionError
from .errors import SecurityError as SecurityError
from .handshake import PROTOCOL_VERSION as PROTOCOL_VERSION
from .identity import Identity as Identity
from .identity import PeerId as PeerId
from .identity import verify_signature as verify_signature
from .members import parse_members as parse_members
from .members import read_members as read_members
from .secure_stream import SecureStream as SecureStream
