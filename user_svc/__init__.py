"""user_svc: accounts, argon2id password hashes, device-bound revocable sessions and profiles.

It is the only owner of the accounts database (PostgreSQL); everything else asks it over gRPC
(`chatmesh.user.v1.UserService`). Layers, each injected into the next by `app.build`:
`store` (SQL and migrations) -> `logic` (rules, hashing, tokens) -> `service` (gRPC adapter).
"""
