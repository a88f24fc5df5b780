"""Data: sources (folders, CSV lists, registry sets), preprocessing, images, the on-disk cache, batches.

This package imports nothing itself: import the module you need."""
