"""Tests marked `docker`: the image and the compose stacks under a real Docker engine."""
