"""Parallelism (§3): the device mesh, parameter layouts from the config's sharding rules,
butterfly synchronization and the lazy update, and the one multi-process initialization."""
