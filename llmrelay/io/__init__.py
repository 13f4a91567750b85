"""Byte transports and coarse timers on trio's low-level API: the hot path's I/O layer."""
