"""presence_svc: which gateway instance holds each socket, and when a user was last seen."""
