"""Operating the fleet: operator keys, signed model rollout and rollback, edge discovery."""
