"""Turn assembly."""
