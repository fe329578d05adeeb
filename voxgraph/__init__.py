"""voxgraph's pure core: audio decoding, turns, confidence, linking, formats.

Nothing in this package imports Ray; `models.py` imports torch and NeMo only
inside its loader functions. `voxgraph.client` and `voxgraph.cli` need only
httpx and rich (`pip install voxgraph`); the other modules need the server
install (`pip install 'voxgraph[server]'`).
"""

__version__ = "0.1.0"
