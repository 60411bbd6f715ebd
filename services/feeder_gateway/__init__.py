"""feeder-gateway: provider connections → normalized ticks → Kafka market data."""
