"""How the services talk: the episode codec, the Redis streams, connections with
backoff, the typed key names, the status records and the validation queue."""
