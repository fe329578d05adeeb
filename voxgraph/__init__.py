"""voxgraph's pure core: audio decoding, turns, confidence, linking, formats.

Nothing in this package imports Ray; `models.py` imports torch and NeMo only
inside its loader functions.
"""

__version__ = "0.1.0"
