"""notify_svc: push to offline devices, with retries and collapse."""
