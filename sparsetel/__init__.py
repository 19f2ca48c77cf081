"""sparsetel: learned sparse discrete codes for network KPI telemetry."""

__version__ = "0.1.0"
