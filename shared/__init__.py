"""The contract edge and cloud share: wire frames, topics, KPI schema, manifest, config, errors.

numpy and the standard library only.
"""

from pathlib import Path

from . import native

native.check(__name__, Path(__file__).parent)
