"""``sim``: a synthetic random-walk market for any symbol, no keys; the default feeder."""
