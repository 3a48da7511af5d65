"""Helpers shared by several test modules (builders of raw data, prepared folders, a toy task)."""
