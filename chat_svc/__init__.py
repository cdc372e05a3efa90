"""chat_svc: assigns msg_ids, dedupes by client_msg_id, publishes to Kafka, routes live delivery."""
