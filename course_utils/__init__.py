"""Shared helpers for the course."""
