"""Replay traces: the JSONL format, a synthetic generator and converters for real traces."""
