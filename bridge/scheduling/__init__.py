"""Scheduling: admission, residency, the driver, loads and upkeep."""
