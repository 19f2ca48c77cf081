"""Helpers shared by tests (import them; never import one test module from another)."""

from __future__ import annotations

from sparsetel.cloud.limits import IngestLimits

# For tests whose frames carry fixed synthetic times (1970, November 2023) rather than times
# near their arrival: the default window (8 days back, 1 day ahead) would refuse them.
ANY_TIME = IngestLimits(
    frame_max_age_s=100 * 365 * 86_400.0, frame_max_ahead_s=100 * 365 * 86_400.0
)
