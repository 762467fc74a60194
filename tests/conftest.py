"""Suite-wide set-up: Ctrl-C reaches the processes under test however the suite started.

A shell starts a background job with SIGINT ignored, and a process that starts with it
ignored keeps it so, as do the processes it starts (Python then installs no
KeyboardInterrupt handler). The tests that press Ctrl-C, on the client, `swarm generate`
or the demo, need it delivered: this restores Python's handler, and the processes the
tests start get the default disposition with it.
"""

import signal

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
