"""Parallelism: the device mesh, sharding rules, (later) butterfly sync and multi-host init.

Imports nothing from data, models or training.
"""
