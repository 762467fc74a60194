"""The client side of the swarm: its view of the peers and its fault-tolerant chain.

Rule: public names are re-exported here as `from .module import Name as Name`. This is the
one part of `routing` that holds tensors (hidden states and their history for replay).
"""

from .chain import ChainFailedError as ChainFailedError
from .chain import Failover as Failover
from .chain import InferenceChain as InferenceChain
from .forward import forward_through_swarm as forward_through_swarm
from .hop_session import StepTiming as StepTiming
from .swarm_view import ClientConfig as ClientConfig
from .swarm_view import SwarmView as SwarmView
from .swarm_view import ask_announcement as ask_announcement
from .swarm_view import read_announcements as read_announcements
from .swarm_view import usable_announcements as usable_announcements
