"""Models: the architecture registry (demo, torchvision, timm), checkpoints, architecture facts, initialisation.

This package imports nothing itself: import the module you need."""
