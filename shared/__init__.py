"""The contract edge and cloud share: wire frames, topics, KPI schema, manifest, config, errors.

numpy and the standard library only.
"""
