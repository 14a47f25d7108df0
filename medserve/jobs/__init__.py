"""Offline inference jobs: resumable batch runs over archives."""
