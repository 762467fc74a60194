"""An OpenAI-compatible HTTP API over the swarm: `swarm api` (`server.py`).

`requests.py` reads and checks the JSON of a request, `completion_text.py` turns tokens into
the text a response carries (stop sequences cut, half characters held back), and `server.py`
routes requests, generates through the swarm and writes JSON or server-sent events.
"""
