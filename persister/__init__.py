"""persister: the Kafka consumer group that writes messages into the message store."""
