"""Proxy metrics, QA gates and deterministic packaging (numpy / Pillow / OpenCV only)."""
