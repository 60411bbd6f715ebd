"""One folder per provider; ``registry`` maps a data_sources.yml ``type`` to its feeder."""
